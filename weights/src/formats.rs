//! Reading and writing the weight formats.

use crate::{Problem, Weights, WeightsError, dequantize, q412::Q412_ONE};
use microgpt_model::{Layout, Param, Shape};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A weights file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// safetensors, one tensor per canonical name (F32, or I16 holding Q4.12), the head count
    /// in the metadata: the project's own format.
    Safetensors,
    /// A raw f32 blob: every parameter in canonical order, little-endian, no header.
    RawF32,
    /// A raw Q4.12 blob: every parameter as i16 (value · 4096), little-endian.
    RawQ412,
    /// A TALOS-V2 ROM folder: `wte_q12.hex`, `layer0_attn_wq_q12.hex`, …, one 16-bit
    /// two's-complement hex word per line.
    TalosHex,
}

impl Format {
    /// Names accepted by [`Format::from_str`] (and `--format`).
    pub const NAMES: [&'static str; 4] = ["safetensors", "f32", "q412", "talos-hex"];
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::RawF32 => "f32",
            Format::RawQ412 => "q412",
            Format::TalosHex => "talos-hex",
        })
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "safetensors" => Ok(Format::Safetensors),
            "f32" | "raw-f32" => Ok(Format::RawF32),
            "q412" | "raw-q412" => Ok(Format::RawQ412),
            "talos-hex" | "talos" | "hex" => Ok(Format::TalosHex),
            _ => Err(format!(
                "unknown weights format `{s}` (expected one of: {})",
                Format::NAMES.join(", ")
            )),
        }
    }
}

/// How to read a weights file.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Force a format instead of detecting it.
    pub format: Option<Format>,
    /// The expected shape. Raw blobs and ROM folders carry no shape: they are read with this one
    /// (default: [`Shape::DEFAULT`]). A safetensors file must hold this shape when it is given.
    pub shape: Option<Shape>,
}

/// The ROM file name TALOS-V2 uses for a canonical tensor name (`layer0.attn_wq` →
/// `layer0_attn_wq_q12.hex`).
pub fn talos_hex_file_name(tensor: &str) -> String {
    format!("{}_q12.hex", tensor.replace('.', "_"))
}

/// Loads weights from a file (or, for [`Format::TalosHex`], a folder).
pub fn load(path: &Path, options: &LoadOptions) -> Result<Weights, WeightsError> {
    let label = path.display().to_string();
    let is_dir = path.is_dir();
    match options.format {
        Some(Format::TalosHex) => return load_talos_dir(path, options),
        None if is_dir => return load_talos_dir(path, options),
        Some(_) if is_dir => {
            return Err(WeightsError::new(
                label,
                Problem::Unusable("is a folder, and only talos-hex weights are folders".into()),
            ));
        }
        _ => {}
    }
    let bytes = std::fs::read(path).map_err(|e| WeightsError::new(&label, Problem::Io(e)))?;
    load_bytes(&bytes, &label, options)
}

/// Loads weights from bytes already in memory; `label` names them in errors.
pub fn load_bytes(bytes: &[u8], label: &str, options: &LoadOptions) -> Result<Weights, WeightsError> {
    let shape = options.shape.unwrap_or(Shape::DEFAULT);
    let format = match options.format {
        Some(f) => f,
        None => detect(bytes, &shape).ok_or_else(|| {
            WeightsError::new(
                label,
                Problem::Unrecognized {
                    len: bytes.len(),
                    expected: raw_sizes(&shape),
                },
            )
        })?,
    };
    let source = format!("{label} ({format})");
    match format {
        Format::Safetensors => read_safetensors(bytes, label, options.shape)
            .and_then(|(shape, data)| Weights::new(shape, data, source)),
        Format::RawF32 => {
            check_raw_size(bytes, &shape, 4, label)?;
            let data = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Weights::new(shape, data, source)
        }
        Format::RawQ412 => {
            check_raw_size(bytes, &shape, 2, label)?;
            let words: Vec<i16> = bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            Weights::new(shape, dequantize(&words), source)
        }
        Format::TalosHex => Err(WeightsError::new(
            label,
            Problem::Unusable("talos-hex weights are a folder of ROM files, not one file".into()),
        )),
    }
}

fn detect(bytes: &[u8], shape: &Shape) -> Option<Format> {
    if looks_like_safetensors(bytes) {
        return Some(Format::Safetensors);
    }
    let n = shape.param_count();
    match bytes.len() {
        len if len == 4 * n => Some(Format::RawF32),
        len if len == 2 * n => Some(Format::RawQ412),
        _ => None,
    }
}

/// safetensors starts with a little-endian u64 header length and a JSON object.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 9 || bytes[8] != b'{' {
        return false;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"));
    (2..100_000_000).contains(&n)
}

fn raw_sizes(shape: &Shape) -> String {
    let n = shape.param_count();
    format!(
        "a raw f32 blob ({} bytes) or a raw Q4.12 blob ({} bytes) of shape {shape}",
        4 * n,
        2 * n
    )
}

fn check_raw_size(bytes: &[u8], shape: &Shape, width: usize, label: &str) -> Result<(), WeightsError> {
    let expected = shape.param_count() * width;
    if bytes.len() == expected {
        return Ok(());
    }
    let kind = if width == 4 { "f32" } else { "Q4.12" };
    Err(WeightsError::new(
        label,
        Problem::WrongSize {
            len: bytes.len(),
            expected: format!(
                "{expected} ({} {kind} parameters of shape {shape})",
                shape.param_count()
            ),
        },
    ))
}

fn read_safetensors(
    bytes: &[u8],
    label: &str,
    expected: Option<Shape>,
) -> Result<(Shape, Vec<f32>), WeightsError> {
    let err = |p| WeightsError::new(label, p);
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(Problem::Safetensors(e.to_string())))?;
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| err(Problem::Safetensors(e.to_string())))?;

    let mut tensors: HashMap<Param, TensorView<'_>> = HashMap::new();
    for (name, view) in st.iter() {
        let param = Param::from_name(name).ok_or_else(|| err(Problem::UnexpectedTensor(name.into())))?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::I16) {
            return Err(err(Problem::Dtype {
                tensor: name.into(),
                dtype: format!("{:?}", view.dtype()),
            }));
        }
        if view.shape().len() != 2 {
            return Err(err(Problem::Inconsistent(format!(
                "`{name}` has {} dimensions {:?}; every tensor is a matrix",
                view.shape().len(),
                view.shape()
            ))));
        }
        tensors.insert(param, view);
    }

    let dims = |p: Param| -> Result<(usize, usize), WeightsError> {
        let view = tensors
            .get(&p)
            .ok_or_else(|| err(Problem::MissingTensor(p.name())))?;
        Ok((view.shape()[0], view.shape()[1]))
    };
    let (vocab, embd) = dims(Param::Wte)?;
    let (block, _) = dims(Param::Wpe)?;
    let layers = tensors
        .keys()
        .filter_map(|p| p.layer())
        .max()
        // Saturating: a layer number as large as usize::MAX is refused as too many layers.
        .map_or(0, |l| l.saturating_add(1));
    let (mlp, _) = dims(Param::Fc1(0))?;
    let heads = match metadata.metadata().as_ref().and_then(|m| m.get("heads")) {
        Some(text) => text.trim().parse().map_err(|_| {
            err(Problem::Unusable(format!(
                "metadata `heads` = `{text}` is not a number"
            )))
        })?,
        None => expected.map(|s| s.heads).ok_or_else(|| {
            err(Problem::Unusable(
                "the metadata has no `heads` (the head count cannot be read off the tensors); \
                 give the shape with --shape"
                    .into(),
            ))
        })?,
    };
    let shape = Shape::new(vocab, block, embd, heads, layers, mlp).map_err(|e| err(Problem::Shape(e)))?;
    if let Some(want) = expected
        && want != shape
    {
        return Err(err(Problem::Inconsistent(format!(
            "the file holds shape {shape}, expected {want}"
        ))));
    }

    let layout = Layout::new(shape);
    let mut data = Vec::with_capacity(layout.param_count());
    for t in layout.tensors() {
        let view = tensors
            .get(&t.param)
            .ok_or_else(|| err(Problem::MissingTensor(t.name.clone())))?;
        if view.shape() != [t.rows, t.cols] {
            return Err(err(Problem::Inconsistent(format!(
                "`{}` is {}×{}, expected {}×{} for shape {shape}",
                t.name,
                view.shape()[0],
                view.shape()[1],
                t.rows,
                t.cols
            ))));
        }
        match view.dtype() {
            Dtype::I16 => data.extend(
                view.data()
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / Q412_ONE),
            ),
            _ => data.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
    Ok((shape, data))
}

/// The string metadata of a safetensors file (empty when there is none or it is malformed).
pub fn safetensors_metadata(bytes: &[u8]) -> HashMap<String, String> {
    SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default()
}

pub(crate) fn safetensors_bytes(weights: &Weights, extra_metadata: &[(&str, &str)]) -> Vec<u8> {
    let layout = weights.layout();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = layout
        .tensors()
        .iter()
        .map(|t| {
            let raw = weights.data()[t.range()]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (t.name.clone(), vec![t.rows, t.cols], raw)
        })
        .collect();
    let views = bytes.iter().map(|(name, dims, raw)| {
        let view = TensorView::new(Dtype::F32, dims.clone(), raw).expect("sizes match");
        (name.as_str(), view)
    });
    let mut metadata: BTreeMap<String, String> = extra_metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    metadata.insert("format".into(), "microgpt".into());
    metadata.insert("heads".into(), weights.shape().heads.to_string());
    metadata.insert("shape".into(), weights.shape().to_string());
    safetensors::tensor::serialize(views, Some(metadata.into_iter().collect()))
        .expect("serialising in-memory tensors cannot fail")
}

fn load_talos_dir(dir: &Path, options: &LoadOptions) -> Result<Weights, WeightsError> {
    let shape = options.shape.unwrap_or(Shape::DEFAULT);
    if !dir.is_dir() {
        return Err(WeightsError::new(
            dir.display(),
            Problem::Unusable("talos-hex weights are a folder of *_q12.hex ROM files".into()),
        ));
    }
    let layout = Layout::new(shape);
    let mut words = Vec::with_capacity(layout.param_count());
    for t in layout.tensors() {
        let name = talos_hex_file_name(&t.name);
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(WeightsError::new(dir.display(), Problem::MissingFile(name)));
        }
        let label = path.display();
        let text = std::fs::read_to_string(&path).map_err(|e| WeightsError::new(&label, Problem::Io(e)))?;
        let before = words.len();
        words.extend(parse_talos_hex(&text, &label.to_string())?);
        let count = words.len() - before;
        if count != t.len() {
            return Err(WeightsError::new(
                &label,
                Problem::HexCount {
                    words: count,
                    expected: t.len(),
                },
            ));
        }
    }
    Weights::new(
        shape,
        dequantize(&words),
        format!("{} (talos-hex)", dir.display()),
    )
}

/// The words of one TALOS-V2 ROM file: one 16-bit two's-complement hex word (1 to 4 hex digits)
/// per line, blank lines skipped; `label` names the file in errors.
pub fn parse_talos_hex(text: &str, label: &str) -> Result<Vec<i16>, WeightsError> {
    let mut words = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let ok = line.len() <= 4 && line.bytes().all(|b| b.is_ascii_hexdigit());
        let word = u16::from_str_radix(line, 16).ok().filter(|_| ok).ok_or_else(|| {
            WeightsError::new(
                label,
                Problem::BadHex {
                    line: i + 1,
                    text: line.chars().take(40).collect(),
                },
            )
        })?;
        words.push(word as i16);
    }
    Ok(words)
}

pub(crate) fn write_talos_hex(weights: &Weights, dir: &Path) -> Result<(), WeightsError> {
    let io = |e| WeightsError::new(dir.display(), Problem::Io(e));
    std::fs::create_dir_all(dir).map_err(io)?;
    let words = weights.quantized();
    for t in weights.layout().tensors() {
        let text: String = words[t.range()]
            .iter()
            .map(|w| format!("{:04x}\n", *w as u16))
            .collect();
        std::fs::write(dir.join(talos_hex_file_name(&t.name)), text).map_err(io)?;
    }
    Ok(())
}
