//! The model's dimensions and the rules a valid shape obeys.

use std::fmt;

/// The dimensions of a microGPT network.
///
/// A `Shape` obtained from [`Shape::new`], [`Shape::parse`] or [`Shape::DEFAULT`] is valid; the
/// fields are public for reading, and [`Shape::validate`] re-checks a hand-built value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of token ids, BOS included (BOS = `vocab - 1`).
    pub vocab: usize,
    /// Context length: positions `0..block`.
    pub block: usize,
    /// Model width.
    pub embd: usize,
    /// Attention heads; `embd` is split into `heads` groups of `embd / heads` channels.
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden width of each MLP.
    pub mlp: usize,
}

/// Largest value accepted for any single dimension.
pub const MAX_DIM: usize = 1 << 16;
/// Largest accepted parameter count (keeps every buffer and offset comfortably in range).
pub const MAX_PARAMS: usize = 1 << 26;

/// The field names, in the order [`Shape`]'s `Display` prints them.
pub const FIELDS: [&str; 6] = ["vocab", "block", "embd", "heads", "layers", "mlp"];

/// Why a shape was refused. Every message names the broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// A dimension is zero.
    Zero { field: &'static str },
    /// `vocab` < 2: there must be at least one ordinary token besides BOS.
    VocabTooSmall { vocab: usize },
    /// `embd` is not a multiple of `heads`.
    HeadsDoNotDivideEmbd { embd: usize, heads: usize },
    /// A dimension is above [`MAX_DIM`].
    DimensionTooLarge { field: &'static str, value: usize },
    /// The parameter count is above [`MAX_PARAMS`].
    TooManyParameters { count: usize },
    /// `--shape` text: a field name that does not exist.
    UnknownField { name: String },
    /// `--shape` text: a field given twice.
    RepeatedField { field: &'static str },
    /// `--shape` text: an item that is not `name=value`.
    Syntax { item: String },
    /// `--shape` text: a value that is not a non-negative integer.
    BadNumber { field: &'static str, text: String },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::Zero { field } => write!(f, "`{field}` must be at least 1"),
            ShapeError::VocabTooSmall { vocab } => write!(
                f,
                "`vocab` must be at least 2 (the ordinary tokens plus BOS = vocab - 1), got {vocab}"
            ),
            ShapeError::HeadsDoNotDivideEmbd { embd, heads } => write!(
                f,
                "`embd` must be divisible by `heads`: {embd} is not a multiple of {heads}"
            ),
            ShapeError::DimensionTooLarge { field, value } => {
                write!(f, "`{field}` must be at most {MAX_DIM}, got {value}")
            }
            ShapeError::TooManyParameters { count } => write!(
                f,
                "the shape has {count} parameters; at most {MAX_PARAMS} are supported"
            ),
            ShapeError::UnknownField { name } => write!(
                f,
                "unknown shape field `{name}` (expected one of: {})",
                FIELDS.join(", ")
            ),
            ShapeError::RepeatedField { field } => {
                write!(f, "shape field `{field}` is given more than once")
            }
            ShapeError::Syntax { item } => write!(
                f,
                "shape item `{item}` is not `name=value` (e.g. `embd=32,heads=4`)"
            ),
            ShapeError::BadNumber { field, text } => {
                write!(f, "shape field `{field}`: `{text}` is not a non-negative integer")
            }
        }
    }
}

impl std::error::Error for ShapeError {}

impl Shape {
    /// Karpathy's microGPT as trained for TALOS-V2: 4,192 parameters.
    pub const DEFAULT: Shape = Shape {
        vocab: 27,
        block: 16,
        embd: 16,
        heads: 4,
        layers: 1,
        mlp: 64,
    };

    /// Builds and validates a shape.
    pub fn new(
        vocab: usize,
        block: usize,
        embd: usize,
        heads: usize,
        layers: usize,
        mlp: usize,
    ) -> Result<Shape, ShapeError> {
        let shape = Shape {
            vocab,
            block,
            embd,
            heads,
            layers,
            mlp,
        };
        shape.validate()?;
        Ok(shape)
    }

    /// The dimensions with their names, in [`FIELDS`] order.
    pub fn fields(&self) -> [(&'static str, usize); 6] {
        [
            ("vocab", self.vocab),
            ("block", self.block),
            ("embd", self.embd),
            ("heads", self.heads),
            ("layers", self.layers),
            ("mlp", self.mlp),
        ]
    }

    /// Checks every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ShapeError> {
        for (field, value) in self.fields() {
            if value == 0 {
                return Err(ShapeError::Zero { field });
            }
        }
        if self.vocab < 2 {
            return Err(ShapeError::VocabTooSmall { vocab: self.vocab });
        }
        for (field, value) in self.fields() {
            if value > MAX_DIM {
                return Err(ShapeError::DimensionTooLarge { field, value });
            }
        }
        if !self.embd.is_multiple_of(self.heads) {
            return Err(ShapeError::HeadsDoNotDivideEmbd {
                embd: self.embd,
                heads: self.heads,
            });
        }
        let count = self.param_count();
        if count > MAX_PARAMS {
            return Err(ShapeError::TooManyParameters { count });
        }
        Ok(())
    }

    /// Parses `name=value` pairs separated by commas, e.g.
    /// `vocab=27,block=16,embd=32,heads=4,layers=2,mlp=128`. Fields left out keep their
    /// [`Shape::DEFAULT`] value; the result is validated.
    pub fn parse(text: &str) -> Result<Shape, ShapeError> {
        let mut shape = Shape::DEFAULT;
        let mut seen = [false; 6];
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, value)) = item.split_once('=') else {
                return Err(ShapeError::Syntax { item: item.into() });
            };
            let name = name.trim();
            let Some(index) = FIELDS.iter().position(|f| *f == name) else {
                return Err(ShapeError::UnknownField { name: name.into() });
            };
            let field = FIELDS[index];
            if std::mem::replace(&mut seen[index], true) {
                return Err(ShapeError::RepeatedField { field });
            }
            let value = value.trim();
            let number: usize = value.parse().map_err(|_| ShapeError::BadNumber {
                field,
                text: value.into(),
            })?;
            *shape.field_mut(index) = number;
        }
        shape.validate()?;
        Ok(shape)
    }

    fn field_mut(&mut self, index: usize) -> &mut usize {
        match index {
            0 => &mut self.vocab,
            1 => &mut self.block,
            2 => &mut self.embd,
            3 => &mut self.heads,
            4 => &mut self.layers,
            _ => &mut self.mlp,
        }
    }

    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.embd / self.heads
    }

    /// The BOS token id (`vocab - 1`).
    pub fn bos(&self) -> usize {
        self.vocab - 1
    }

    /// Total parameter count, saturating (so it is safe to call on an unvalidated shape).
    pub fn param_count(&self) -> usize {
        let e = self.embd;
        let per_layer = (4usize.saturating_mul(e).saturating_mul(e))
            .saturating_add(2usize.saturating_mul(self.mlp).saturating_mul(e));
        (2usize.saturating_mul(self.vocab).saturating_mul(e))
            .saturating_add(self.block.saturating_mul(e))
            .saturating_add(self.layers.saturating_mul(per_layer))
    }

    /// Multiply-accumulates with weights per token (every matvec; embedding lookups excluded).
    /// 3,504 for the default shape.
    pub fn weight_macs(&self) -> usize {
        self.param_count() - (self.vocab + self.block) * self.embd
    }
}

impl Default for Shape {
    fn default() -> Shape {
        Shape::DEFAULT
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shape_counts() {
        let s = Shape::DEFAULT;
        s.validate().unwrap();
        assert_eq!(s.param_count(), 4192);
        assert_eq!(s.weight_macs(), 3504);
        assert_eq!(s.head_dim(), 4);
        assert_eq!(s.bos(), 26);
    }

    #[test]
    fn parameter_counts_for_other_shapes() {
        // wte + wpe + lm_head + layers * (4 e^2 + 2 e mlp)
        let s = Shape::new(27, 16, 32, 4, 2, 128).unwrap();
        assert_eq!(
            s.param_count(),
            27 * 32 * 2 + 16 * 32 + 2 * (4 * 32 * 32 + 2 * 32 * 128)
        );
        assert_eq!(s.param_count(), 26_816);
        let s = Shape::new(2, 1, 1, 1, 1, 1).unwrap();
        assert_eq!(s.param_count(), 2 + 1 + 2 + 4 + 2);
        let s = Shape::new(65, 64, 64, 8, 4, 256).unwrap();
        assert_eq!(
            s.param_count(),
            65 * 64 * 2 + 64 * 64 + 4 * (4 * 64 * 64 + 2 * 64 * 256)
        );
    }

    #[test]
    fn every_rule_is_named() {
        let err = |v, b, e, h, l, m| Shape::new(v, b, e, h, l, m).unwrap_err().to_string();
        assert_eq!(err(27, 0, 16, 4, 1, 64), "`block` must be at least 1");
        assert_eq!(err(27, 16, 16, 4, 1, 0), "`mlp` must be at least 1");
        assert!(err(1, 16, 16, 4, 1, 64).contains("`vocab` must be at least 2"));
        assert_eq!(
            err(27, 16, 18, 4, 1, 64),
            "`embd` must be divisible by `heads`: 18 is not a multiple of 4"
        );
        assert!(err(27, 16, 16, 4, 1, 1 << 17).contains("`mlp` must be at most 65536"));
        assert!(err(27, 16, 4096, 1, 4096, 4096).contains("parameters"));
    }

    #[test]
    fn parse_round_trips_and_defaults() {
        let s = Shape::parse("vocab=27,block=16,embd=32,heads=4,layers=2,mlp=128").unwrap();
        assert_eq!(s, Shape::new(27, 16, 32, 4, 2, 128).unwrap());
        assert_eq!(Shape::parse(&s.to_string()).unwrap(), s);
        assert_eq!(Shape::parse("").unwrap(), Shape::DEFAULT);
        let s = Shape::parse(" layers = 3 ").unwrap();
        assert_eq!(s.layers, 3);
        assert_eq!(s.embd, 16);
    }

    #[test]
    fn parse_errors() {
        let e = |t| Shape::parse(t).unwrap_err().to_string();
        assert!(e("emdb=3").contains("unknown shape field `emdb`"));
        assert_eq!(e("embd=32,embd=32"), "shape field `embd` is given more than once");
        assert!(e("embd").contains("not `name=value`"));
        assert!(e("heads=-1").contains("`-1` is not a non-negative integer"));
        assert!(e("heads=5").contains("divisible"));
    }
}
