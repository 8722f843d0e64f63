//! The weight layout: canonical tensor names, dimensions and offsets in the flat parameter vector.

use crate::Shape;
use std::fmt;

/// One weight matrix of the model. Every matrix is row-major `[rows = out][cols = in]`; the
/// embedding tables are `[token or position][embd]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// Token embedding, `vocab × embd`.
    Wte,
    /// Position embedding, `block × embd`.
    Wpe,
    /// Attention query projection of a layer, `embd × embd`.
    Wq(usize),
    /// Attention key projection, `embd × embd`.
    Wk(usize),
    /// Attention value projection, `embd × embd`.
    Wv(usize),
    /// Attention output projection, `embd × embd`.
    Wo(usize),
    /// MLP up projection, `mlp × embd`.
    Fc1(usize),
    /// MLP down projection, `embd × mlp`.
    Fc2(usize),
    /// Output head, `vocab × embd`.
    LmHead,
}

/// The six tensors of one layer, in canonical order.
pub const LAYER_PARAMS: [fn(usize) -> Param; 6] =
    [Param::Wq, Param::Wk, Param::Wv, Param::Wo, Param::Fc1, Param::Fc2];

const LAYER_SUFFIXES: [&str; 6] = ["attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2"];

impl Param {
    /// The layer this tensor belongs to, if any.
    pub fn layer(self) -> Option<usize> {
        match self {
            Param::Wte | Param::Wpe | Param::LmHead => None,
            Param::Wq(l) | Param::Wk(l) | Param::Wv(l) | Param::Wo(l) | Param::Fc1(l) | Param::Fc2(l) => {
                Some(l)
            }
        }
    }

    fn layer_slot(self) -> Option<usize> {
        match self {
            Param::Wq(_) => Some(0),
            Param::Wk(_) => Some(1),
            Param::Wv(_) => Some(2),
            Param::Wo(_) => Some(3),
            Param::Fc1(_) => Some(4),
            Param::Fc2(_) => Some(5),
            Param::Wte | Param::Wpe | Param::LmHead => None,
        }
    }

    /// Canonical tensor name: `wte`, `wpe`, `layer{l}.attn_wq` … `layer{l}.mlp_fc2`, `lm_head`.
    pub fn name(self) -> String {
        match (self, self.layer(), self.layer_slot()) {
            (Param::Wte, ..) => "wte".into(),
            (Param::Wpe, ..) => "wpe".into(),
            (Param::LmHead, ..) => "lm_head".into(),
            (_, Some(l), Some(slot)) => format!("layer{l}.{}", LAYER_SUFFIXES[slot]),
            _ => unreachable!("every layer tensor has a layer and a slot"),
        }
    }

    /// Parses a canonical name (the inverse of [`Param::name`]).
    pub fn from_name(name: &str) -> Option<Param> {
        match name {
            "wte" => return Some(Param::Wte),
            "wpe" => return Some(Param::Wpe),
            "lm_head" => return Some(Param::LmHead),
            _ => {}
        }
        let rest = name.strip_prefix("layer")?;
        let (layer, suffix) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if layer.len() > 1 && layer.starts_with('0') {
            return None;
        }
        let layer: usize = layer.parse().ok()?;
        let slot = LAYER_SUFFIXES.iter().position(|s| *s == suffix)?;
        Some(LAYER_PARAMS[slot](layer))
    }

    /// `(rows, cols)` of this tensor for a shape.
    pub fn dims(self, shape: &Shape) -> (usize, usize) {
        let e = shape.embd;
        match self {
            Param::Wte | Param::LmHead => (shape.vocab, e),
            Param::Wpe => (shape.block, e),
            Param::Wq(_) | Param::Wk(_) | Param::Wv(_) | Param::Wo(_) => (e, e),
            Param::Fc1(_) => (shape.mlp, e),
            Param::Fc2(_) => (e, shape.mlp),
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where one tensor lives in the flat, canonical parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub param: Param,
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false: every tensor of a valid shape has at least one element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index range in the flat parameter vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The canonical order of every tensor of a shape (the raw blobs use this order, flat):
/// `wte`, `wpe`, each layer's `attn_wq, attn_wk, attn_wv, attn_wo, mlp_fc1, mlp_fc2`, `lm_head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    tensors: Vec<Tensor>,
}

impl Layout {
    pub fn new(shape: Shape) -> Layout {
        let mut params = vec![Param::Wte, Param::Wpe];
        for layer in 0..shape.layers {
            params.extend(LAYER_PARAMS.iter().map(|p| p(layer)));
        }
        params.push(Param::LmHead);
        let mut offset = 0;
        let tensors = params
            .into_iter()
            .map(|param| {
                let (rows, cols) = param.dims(&shape);
                let t = Tensor {
                    param,
                    name: param.name(),
                    rows,
                    cols,
                    offset,
                };
                offset += rows * cols;
                t
            })
            .collect();
        Layout { shape, tensors }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Every tensor, in canonical order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Total parameter count (the length of the flat vector).
    pub fn param_count(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.offset + t.len())
    }

    /// The tensor for a parameter, or `None` when it does not exist in this shape (a layer index
    /// out of range).
    pub fn find(&self, param: Param) -> Option<&Tensor> {
        let index = match (param, param.layer(), param.layer_slot()) {
            (Param::Wte, ..) => 0,
            (Param::Wpe, ..) => 1,
            (Param::LmHead, ..) => 2 + 6 * self.shape.layers,
            (_, Some(l), Some(slot)) if l < self.shape.layers => 2 + 6 * l + slot,
            _ => return None,
        };
        self.tensors.get(index)
    }

    /// The tensor for a parameter of this shape.
    ///
    /// # Panics
    /// If `param` names a layer the shape does not have (see [`Layout::find`]).
    pub fn tensor(&self, param: Param) -> &Tensor {
        self.find(param)
            .unwrap_or_else(|| panic!("{param} does not exist in shape {}", self.shape))
    }

    /// Looks a tensor up by canonical name.
    pub fn by_name(&self, name: &str) -> Option<&Tensor> {
        Param::from_name(name).and_then(|p| self.find(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_canonical() {
        let layout = Layout::new(Shape::DEFAULT);
        let names: Vec<&str> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "wte",
                "wpe",
                "layer0.attn_wq",
                "layer0.attn_wk",
                "layer0.attn_wv",
                "layer0.attn_wo",
                "layer0.mlp_fc1",
                "layer0.mlp_fc2",
                "lm_head"
            ]
        );
        let offsets: Vec<usize> = layout.tensors().iter().map(|t| t.offset).collect();
        assert_eq!(offsets, [0, 432, 688, 944, 1200, 1456, 1712, 2736, 3760]);
        assert_eq!(layout.param_count(), 4192);
        assert_eq!(layout.tensor(Param::Fc2(0)).rows, 16);
        assert_eq!(layout.tensor(Param::Fc2(0)).cols, 64);
    }

    #[test]
    fn names_round_trip_and_lookup() {
        let shape = Shape::new(27, 16, 32, 4, 3, 128).unwrap();
        let layout = Layout::new(shape);
        assert_eq!(layout.param_count(), shape.param_count());
        for t in layout.tensors() {
            assert_eq!(Param::from_name(&t.name), Some(t.param));
            assert_eq!(layout.by_name(&t.name), Some(t));
            assert_eq!(layout.find(t.param), Some(t));
        }
        assert_eq!(layout.find(Param::Wq(3)), None);
        for bad in [
            "layer",
            "layer.attn_wq",
            "layer01.attn_wq",
            "layer0.attn_wx",
            "WTE",
        ] {
            assert_eq!(Param::from_name(bad), None, "{bad}");
        }
    }
}
