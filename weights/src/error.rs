//! Errors that name the file and the problem.

use microgpt_model::ShapeError;
use std::fmt;

/// A weights file could not be used: `path` names the file (or folder, or the in-memory
/// source), `problem` says why.
#[derive(Debug)]
pub struct WeightsError {
    pub path: String,
    pub problem: Problem,
}

/// What is wrong with a weights file.
#[derive(Debug)]
pub enum Problem {
    /// The file could not be read.
    Io(std::io::Error),
    /// The format was not recognised and none was forced.
    Unrecognized { len: usize, expected: String },
    /// A raw blob whose size fits no format of the expected shape.
    WrongSize { len: usize, expected: String },
    /// The safetensors container is malformed (truncated, bad header, bad offsets).
    Safetensors(String),
    /// A tensor the shape needs is absent.
    MissingTensor(String),
    /// A tensor that is not part of the model.
    UnexpectedTensor(String),
    /// A tensor with a data type other than F32 or I16 (Q4.12).
    Dtype { tensor: String, dtype: String },
    /// Tensor dimensions that disagree with each other or with the expected shape.
    Inconsistent(String),
    /// Anything else that makes the source unusable (a folder where a file is needed, metadata
    /// that does not parse), said in full.
    Unusable(String),
    /// The tensors describe no valid shape.
    Shape(ShapeError),
    /// NaN or infinity.
    NonFinite {
        tensor: String,
        index: usize,
        value: f32,
    },
    /// A ROM file line that is not a 16-bit hex word.
    BadHex { line: usize, text: String },
    /// A ROM file with the wrong number of words.
    HexCount { words: usize, expected: usize },
    /// A ROM file of the folder is missing.
    MissingFile(String),
}

impl WeightsError {
    pub fn new(path: impl fmt::Display, problem: Problem) -> WeightsError {
        WeightsError {
            path: path.to_string(),
            problem,
        }
    }
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Io(e) => write!(f, "cannot read: {e}"),
            Problem::Unrecognized { len, expected } => write!(
                f,
                "unrecognised weights file ({len} bytes): not safetensors, and not {expected}; \
                 use --format to say what it is"
            ),
            Problem::WrongSize { len, expected } => {
                write!(f, "wrong size: {len} bytes, expected {expected}")
            }
            Problem::Safetensors(e) => write!(f, "malformed safetensors: {e}"),
            Problem::MissingTensor(name) => write!(f, "tensor `{name}` is missing"),
            Problem::UnexpectedTensor(name) => {
                write!(f, "tensor `{name}` is not a microGPT tensor")
            }
            Problem::Dtype { tensor, dtype } => write!(
                f,
                "tensor `{tensor}` has dtype {dtype}; expected F32 (or I16 holding Q4.12)"
            ),
            Problem::Inconsistent(why) => write!(f, "inconsistent shapes: {why}"),
            Problem::Unusable(why) => f.write_str(why),
            Problem::Shape(e) => write!(f, "invalid shape: {e}"),
            Problem::NonFinite { tensor, index, value } => {
                write!(f, "tensor `{tensor}` holds {value} at index {index}")
            }
            Problem::BadHex { line, text } => {
                write!(f, "line {line}: `{text}` is not a 16-bit hex word")
            }
            Problem::HexCount { words, expected } => {
                write!(f, "{words} words, expected {expected}")
            }
            Problem::MissingFile(name) => write!(f, "ROM file `{name}` is missing"),
        }
    }
}

impl std::error::Error for WeightsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Io(e) => Some(e),
            Problem::Shape(e) => Some(e),
            _ => None,
        }
    }
}
