//! Keys, as docs/API.md's "Keys" describes them: which keys and signatures the server takes
//! (`validation`, the libsignal `vectors`), uploads of one-time EC prekeys (`prekeys`), Kyber
//! prekeys (`kyber`) and the signed prekey (`signed`), and who may call the key routes
//! (`access`). The bundle that hands the keys out is `crate::bundle`.

mod access;
mod kyber;
mod prekeys;
mod signed;
mod validation;
mod vectors;

use crate::helpers::flip;
use serde_json::Value;
use signal_server::crypto::KeyPair;

type Mutation = Box<dyn Fn(&mut Value, &KeyPair)>;

/// A change to a request body (which may need the device's identity key).
fn m(f: impl Fn(&mut Value, &KeyPair) + 'static) -> Mutation {
    Box::new(f)
}

type ItemMutation = Box<dyn Fn(&mut Value)>;

/// A change to a list of prekeys.
fn km(f: impl Fn(&mut Value) + 'static) -> ItemMutation {
    Box::new(f)
}

/// A change flipping one bit (`byte`, `mask`) of the base64 value at the JSON pointer `ptr`.
fn flip_at(ptr: &'static str, byte: usize, mask: u8) -> Mutation {
    m(move |b, _| {
        let v = b.pointer_mut(ptr).expect(ptr);
        *v = flip(v, byte, mask);
    })
}
