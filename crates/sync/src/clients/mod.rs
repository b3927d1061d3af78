//! The two-way sync of client cards, tasks and interaction history between the company's copy
//! and the CRM (`docs/two-way-sync.md`): the model and its bounds, the three-way merge with
//! per-field ownership, the Kafka records, and the ports the adapters implement.

pub mod apply;
pub mod contract;
pub mod memory;
pub mod merge;
pub mod model;
pub mod ports;
pub mod records;

pub use memory::MemoryClients;
pub use merge::{merge, Base, Conflict, Owner, Ownership, Plan, Resolution};
pub use model::{
    Card, ClientId, Direction, Field, Interaction, InteractionChannel, InteractionId, Invalid, Source, Stamp,
    Task, TaskId, TaskState, Value,
};
pub use ports::{
    CardChange, CardChanged, Choice, ClientCrm, ClientSession, ClientStore, CrmContact, CrmTask, Entity,
    EntityWritten, Hint, IdempotencyClaim, Idempotent, Intake, Leadership, OperatorTask, OperatorTaskState,
    OutboxRow, StoreError, StoredCard, SyncSnapshot, SyncWrite, WebhookRefusal, WriteContext,
};
