//! The single description of microGPT.
//!
//! - [`Shape`]: the dimensions, validated (every error names the broken rule);
//! - [`Layout`]: canonical tensor names, dimensions and offsets of the flat parameter vector;
//! - [`Program`]: the forward pass for one token as an ordered list of [`Op`]s over named
//!   [`Buffer`]s;
//! - [`Program::groups`]: the runs of ops a renderer may render as one ([`Fusion`]);
//! - [`plan`]: how kernels rearrange the parameters at prepare time (the weight plan).
//!
//! Every backend (reference engine, proc-macro kernels, JIT, CUDA, TALOS emulation) renders the
//! [`Program`]; none restates the forward pass by hand. Adding an op is one edit here, and every
//! renderer that does not handle it stops compiling (the matches are exhaustive).

mod groups;
mod layout;
pub mod numerics;
pub mod plan;
mod precision;
mod program;
mod shape;
mod vocab;

pub use groups::{Fusion, Group};
pub use layout::{LAYER_PARAMS, Layout, Param, Tensor};
pub use precision::Precision;
pub use program::{Buffer, HistoryFreePrefix, Op, Program, RMS_EPS};
pub use shape::{FIELDS, MAX_DIM, MAX_PARAMS, Shape, ShapeError};
pub use vocab::{char_token, detokenize, token_char};
