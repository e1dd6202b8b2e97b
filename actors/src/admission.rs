//! A flow's input form: what `GET /flows/{flow}` shows, and the check of a
//! launch's inputs before anything of it is stored. A refused launch
//! stores nothing; an admitted one runs with the inputs the check gave and
//! what it decided ([`Origin::launch`](crate::Origin::launch)).

use serde_json::Value;
use std::sync::Arc;

/// What an admitted launch runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Admitted {
    /// The inputs the execution gets (and its `inputs` event holds).
    pub inputs: Value,
    /// What the check decided, kept with the execution (its `meta`) and
    /// given to a command flow as `KODO_LAUNCH`.
    pub launch: Option<Value>,
}

/// Why a launch was not admitted.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The inputs are not right: messages by field (`_global_` for the
    /// form as a whole). The caller's fault: a 400.
    #[error("the inputs were refused: {0}")]
    Invalid(Value),
    /// The check itself failed (its process died, an exception in the
    /// form's code). Not the caller's fault: a 503 naming the cause.
    #[error("the flow's form failed: {0}")]
    Failed(String),
}

/// A flow's form and the check of its launches.
#[async_trait::async_trait]
pub trait Admission: Send + Sync + std::fmt::Debug {
    /// The form clients render (JSON; its shape is the flow kind's).
    async fn form(&self) -> Result<Value, String>;

    /// The launch `owner`'s `submitted` inputs give, or why none.
    async fn admit(&self, owner: &str, submitted: Value) -> Result<Admitted, Refused>;

    /// What an answer to the lock `name` (opened with `data`) gives the
    /// flow, or why it is refused (the lock stays open). By default the
    /// answer as it came.
    async fn answer(&self, name: &str, data: Value, answer: Value) -> Result<Value, Refused> {
        let _ = (name, data);
        Ok(answer)
    }
}

/// An [`Admission`] shared by a flow's definition.
pub type SharedAdmission = Arc<dyn Admission>;
