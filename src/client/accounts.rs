//! `/auth/...`: registration, tokens, the caller's account and its password.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Client, Error};

/// The body of `POST /auth/users`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

/// `{"email", "username", "id"}` (`email` is `""` when none was given).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserInfo {
    pub email: String,
    pub username: String,
    pub id: u64,
}

/// `{"token"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
}

impl Client {
    /// `POST /auth/users` (201).
    pub async fn register(&self, user: &NewUser) -> Result<UserInfo, Error> {
        let path = "/auth/users";
        self.call(Method::POST, path, Some(user), StatusCode::CREATED)
            .await
    }

    /// `POST /auth/jwt/create` (200): the token of a password login.
    pub async fn login(&self, username: &str, password: &str) -> Result<String, Error> {
        let body = json!({"username": username, "password": password});
        let path = "/auth/jwt/create";
        let answer: Token = self
            .call(Method::POST, path, Some(&body), StatusCode::OK)
            .await?;
        Ok(answer.token)
    }

    /// `POST /auth/jwt/refresh` (200): a new token for a still valid one.
    pub async fn refresh(&self, token: &str) -> Result<String, Error> {
        let body = Token {
            token: token.to_string(),
        };
        let path = "/auth/jwt/refresh";
        let answer: Token = self
            .call(Method::POST, path, Some(&body), StatusCode::OK)
            .await?;
        Ok(answer.token)
    }

    /// `POST /auth/jwt/verify` (200 with the same token when it is valid).
    pub async fn verify(&self, token: &str) -> Result<String, Error> {
        let body = Token {
            token: token.to_string(),
        };
        let path = "/auth/jwt/verify";
        let answer: Token = self
            .call(Method::POST, path, Some(&body), StatusCode::OK)
            .await?;
        Ok(answer.token)
    }

    /// `GET /auth/users/me` (200).
    pub async fn me(&self) -> Result<UserInfo, Error> {
        let path = "/auth/users/me";
        self.call(Method::GET, path, None::<&()>, StatusCode::OK)
            .await
    }

    /// `DELETE /auth/users/me` (204): deletes the caller's account.
    pub async fn delete_me(&self, current_password: &str) -> Result<(), Error> {
        let body = json!({"current_password": current_password});
        let path = "/auth/users/me";
        self.call_empty(Method::DELETE, path, Some(&body), StatusCode::NO_CONTENT)
            .await
    }

    /// `POST /auth/password` (204): every older token stops working.
    pub async fn change_password(&self, current: &str, new: &str) -> Result<(), Error> {
        let body = json!({"current_password": current, "new_password": new});
        let path = "/auth/password";
        self.call_empty(Method::POST, path, Some(&body), StatusCode::NO_CONTENT)
            .await
    }

    /// `POST /auth/password/reset` (204 for any well-formed email).
    pub async fn reset(&self, email: &str) -> Result<(), Error> {
        let body = json!({"email": email});
        let path = "/auth/password/reset";
        self.call_empty(Method::POST, path, Some(&body), StatusCode::NO_CONTENT)
            .await
    }

    /// `POST /auth/password/reset/confirm` (204), with the `uid` and token of the reset mail.
    pub async fn reset_confirm(&self, uid: &str, token: &str, new: &str) -> Result<(), Error> {
        let body = json!({"uid": uid, "token": token, "new_password": new});
        let path = "/auth/password/reset/confirm";
        self.call_empty(Method::POST, path, Some(&body), StatusCode::NO_CONTENT)
            .await
    }
}
