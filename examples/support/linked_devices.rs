//! Accounts with several devices (`/v2/...`): a device linked to an account shares its identity
//! key pair and has keys of its own; a sender holds a session with every device of a peer, made
//! from the peer's v2 bundle, and sends one ciphertext per device in one request.
//!
//! A peer's devices, as this client knows them, are the devices it has a session with (the
//! keys of `Client::peers` with the peer's name): that is the list a send names, and what the
//! server checks it against (409 `mismatched_devices`, 410 `stale_devices`).

use std::time::SystemTime;

use libsignal_protocol_syft::{
    kem, process_prekey_bundle, CiphertextMessageType, DeviceId, IdentityKey, PreKeyBundle,
    ProtocolAddress, PublicKey, SessionStore as _,
};
use rand::rngs::OsRng;
use rand::TryRngCore as _;
use signal_server::client::{
    Bundles, DeviceBundle, DeviceMessage, LinkDevice, ListedDevice, SentAll,
};

use super::{Client, Result, Uploaded};

impl Client {
    /// A new install on this device's account: the same identity key pair and token (as the
    /// primary hands them to a device it links, over the client's own provisioning channel), a
    /// registration id of its own, an empty store and nothing uploaded yet. `link` makes it a
    /// linked device; after `delete_devices`, `create_device` makes it the new primary.
    pub fn new_install(&self) -> Result<Client> {
        Client::install(
            &self.api,
            &self.username,
            &self.token,
            self.identity,
            Some(self.registration_id),
        )
    }

    /// Links this install to the account (`POST /v2/devices`) with fresh keys, as
    /// `create_device` makes them; the server picks the device id, which this client takes.
    pub async fn link(
        &mut self,
        pre_key_ids: impl IntoIterator<Item = u32>,
        kyber_pre_key_ids: impl IntoIterator<Item = u32>,
        last_resort_kyber_id: Option<u32>,
    ) -> Result<Uploaded> {
        let (keys, uploaded) = self
            .new_keys(pre_key_ids, kyber_pre_key_ids, last_resort_kyber_id)
            .await?;
        let device = LinkDevice {
            identity_key: self.identity.identity_key().serialize().to_vec(),
            registration_id: self.registration_id,
            pre_keys: keys.pre_keys,
            signed_pre_key: keys.signed_pre_key,
            kyber_pre_keys: keys.kyber_pre_keys,
            last_resort_kyber_pre_key: keys.last_resort,
        };
        let linked = self.http().link_device(&device).await?;
        if linked.address != format!("{}.{}", self.username, linked.device_id) {
            return super::fail(format!("linked as {linked:?}"));
        }
        self.device_id = device_id(linked.device_id)?;
        // From now on this install acts with the token bound to its device, which dies with it.
        self.token = linked.token;
        Ok(uploaded)
    }

    /// `GET /v2/devices`: every device of the account.
    pub async fn devices(&self) -> Result<Vec<ListedDevice>> {
        Ok(self.http().devices().await?)
    }

    /// `DELETE /v2/devices/<deviceId>`: unlinks one of the account's linked devices.
    pub async fn unlink(&self, device_id: u32) -> Result<()> {
        Ok(self.http().unlink_device(device_id).await?)
    }

    /// `DELETE /device/`: removes every device of the account, their keys and queues.
    pub async fn delete_devices(&self) -> Result<()> {
        Ok(self.http().delete_device().await?)
    }

    /// Fetches `username`'s v2 bundle (`GET /v2/prekeybundle/...`) and starts a session (PQXDH)
    /// with each device in it; those devices are then all this client knows of `username`.
    /// Answers the bundle.
    pub async fn start_sessions(&mut self, username: &str) -> Result<Bundles> {
        let bundles = self.http().bundles(username, self.registration_id).await?;
        let identity = IdentityKey::decode(&bundles.identity_key)?;
        self.peers.retain(|address, _| address.name() != username);
        for device in &bundles.devices {
            let address = ProtocolAddress::new(username.to_string(), device_id(device.device_id)?);
            let bundle = device_bundle(device, identity)?;
            process_prekey_bundle(
                &address,
                &mut self.store.session_store,
                &mut self.store.identity_store,
                &bundle,
                SystemTime::now(),
                &mut OsRng.unwrap_err(),
            )
            .await?;
            self.peers.insert(address, device.registration_id);
        }
        Ok(bundles)
    }

    /// The device ids of `username` this client has a session with, in order.
    pub fn known_devices(&self, username: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .peers
            .keys()
            .filter(|a| a.name() == username)
            .map(|a| u32::from(a.device_id()))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Ends the session with device `id` of `username` (unlinked, say): later sends
    /// leave it out.
    pub async fn forget(&mut self, username: &str, id: u32) -> Result<()> {
        let address = ProtocolAddress::new(username.to_string(), device_id(id)?);
        self.peers.remove(&address);
        let store = &mut self.store.session_store;
        if let Some(mut record) = store.load_session(&address).await? {
            record.archive_current_state()?;
            store.store_session(&address, &record).await?;
        }
        Ok(())
    }

    /// Encrypts `text` for every device of `username` this client knows and sends the
    /// ciphertexts in one `POST /v2/messages/<regId>`. Answers each device's ciphertext type
    /// and the 201; a refusal is the typed client's error (see `super::refusal`), with nothing stored.
    pub async fn send_all(
        &mut self,
        username: &str,
        text: &str,
    ) -> Result<(Vec<(u32, CiphertextMessageType)>, SentAll)> {
        let mut kinds = Vec::new();
        let mut messages = Vec::new();
        for id in self.known_devices(username) {
            let address = ProtocolAddress::new(username.to_string(), device_id(id)?);
            let (kind, content) = self.encrypt(&address, text).await?;
            kinds.push((id, kind));
            messages.push(DeviceMessage {
                device_id: id,
                registration_id: self.peers[&address],
                content,
            });
        }
        let sent = self
            .http()
            .send_all(self.registration_id, username, &messages)
            .await?;
        Ok((kinds, sent))
    }
}

fn device_id(id: u32) -> Result<DeviceId> {
    Ok(DeviceId::try_from(id).map_err(|_| format!("device id {id} out of range"))?)
}

/// One device of a v2 bundle as a libsignal `PreKeyBundle` (`identity` is the account's).
fn device_bundle(d: &DeviceBundle, identity: IdentityKey) -> Result<PreKeyBundle> {
    let pre_key = match &d.pre_key {
        Some(k) => Some((k.key_id.into(), PublicKey::deserialize(&k.public_key)?)),
        None => None,
    };
    let spk = &d.signed_pre_key;
    let kyber = d
        .kyber_pre_key
        .as_ref()
        .ok_or("a device in the bundle has no Kyber prekey; PQXDH needs one")?;
    Ok(PreKeyBundle::new(
        d.registration_id,
        device_id(d.device_id)?,
        pre_key,
        spk.key_id.into(),
        PublicKey::deserialize(&spk.public_key)?,
        spk.signature.clone(),
        kyber.key_id.into(),
        kem::PublicKey::deserialize(&kyber.public_key)?,
        kyber.signature.clone(),
        identity,
    )?)
}
