//! Checks the `kernels!` input: every rule of a shape, each failure a spanned error naming it.

use crate::ast::{Input, Value};
use microgpt_model::{FIELDS, Shape, ShapeError};
use proc_macro2::Span;
use syn::{Error, Ident};

/// Largest size, in [`unrolled_size`]'s units, the fully unrolled generator accepts (the shipped
/// `embd=32,layers=2,mlp=128` shape is 58,613 units; the build times and sizes of larger ones are
/// in docs/results.md).
pub const MAX_UNROLLED_SIZE: usize = 1 << 17;

/// How much code the fully unrolled kernels of `shape` take, in weight-MAC equivalents (fitted to
/// the generated text): one a weight MAC (the scalar
/// kernel has one statement each), two per unit of layers × block² × embd (the attention: every
/// position's step is unrolled over the positions before it, in every layer), fifteen a
/// vocabulary entry (the sampler and the logits).
pub fn unrolled_size(shape: &Shape) -> usize {
    shape.weight_macs() + 2 * shape.layers * shape.block * shape.block * shape.embd + 15 * shape.vocab
}

/// Whether `shape` is small enough for the fully unrolled generator; the reason when not.
pub fn check_unrollable(shape: &Shape) -> Result<(), String> {
    let size = unrolled_size(shape);
    if size > MAX_UNROLLED_SIZE {
        return Err(format!(
            "shape {shape} is too large to unroll: {size} units ({} weight MACs + 2 x {} for the attention (layers x block^2 x embd) + 15 x {} vocabulary entries); fully unrolled kernels are generated for at most {MAX_UNROLLED_SIZE} (the JIT takes larger shapes, up to its own limit)",
            shape.weight_macs(),
            shape.layers * shape.block * shape.block * shape.embd,
            shape.vocab
        ));
    }
    Ok(())
}

/// What the macro generates: a module `name` of kernels for `shape`.
pub struct Spec {
    pub name: Ident,
    pub shape: Shape,
}

const KEYS: [&str; 7] = ["name", "vocab", "block", "embd", "heads", "layers", "mlp"];

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Validates the parsed input into a [`Spec`].
pub fn validate(input: &Input) -> Result<Spec, Error> {
    let mut name: Option<Ident> = None;
    let mut values: [Option<(usize, Span)>; 6] = [None; 6];
    for field in &input.fields {
        let key = field.key.to_string();
        let Some(slot) = KEYS.iter().position(|k| *k == key) else {
            let best = KEYS.iter().min_by_key(|k| distance(&key, k)).expect("keys");
            let hint = if distance(&key, best) <= 2 {
                format!("; did you mean `{best}`?")
            } else {
                String::new()
            };
            return Err(Error::new(
                field.key.span(),
                format!("unknown field `{key}` (expected: {}){hint}", KEYS.join(", ")),
            ));
        };
        let seen = if slot == 0 {
            name.is_some()
        } else {
            values[slot - 1].is_some()
        };
        if seen {
            return Err(Error::new(
                field.key.span(),
                format!("field `{key}` is given twice"),
            ));
        }
        match (slot, &field.value) {
            (0, Value::Ident(id)) => name = Some(id.clone()),
            (0, Value::Int(lit)) => {
                return Err(Error::new(
                    lit.span(),
                    "`name` must be an identifier, e.g. `microgpt_16`",
                ));
            }
            (_, Value::Int(lit)) => {
                let v: usize = lit
                    .base10_parse()
                    .map_err(|_| Error::new(lit.span(), format!("`{key}` must be a non-negative integer")))?;
                values[slot - 1] = Some((v, lit.span()));
            }
            (_, Value::Ident(id)) => {
                return Err(Error::new(
                    id.span(),
                    format!("`{key}` must be an integer, not `{id}`"),
                ));
            }
        }
    }
    let name =
        name.ok_or_else(|| Error::new(Span::call_site(), "missing field `name` (the module to generate)"))?;
    let mut dims = [0usize; 6];
    for (i, v) in values.iter().enumerate() {
        match v {
            Some((value, _)) => dims[i] = *value,
            None => {
                return Err(Error::new(
                    Span::call_site(),
                    format!(
                        "missing field `{}` (a shape needs all of {})",
                        FIELDS[i],
                        FIELDS.join(", ")
                    ),
                ));
            }
        }
    }
    let [vocab, block, embd, heads, layers, mlp] = dims;
    let span_of = |field: &str| {
        let i = FIELDS.iter().position(|f| *f == field).expect("field");
        values[i].map_or(Span::call_site(), |(_, s)| s)
    };
    let shape = Shape::new(vocab, block, embd, heads, layers, mlp).map_err(|e| {
        let span = match &e {
            ShapeError::Zero { field } | ShapeError::DimensionTooLarge { field, .. } => span_of(field),
            ShapeError::VocabTooSmall { .. } => span_of("vocab"),
            ShapeError::HeadsDoNotDivideEmbd { .. } => span_of("heads"),
            _ => Span::call_site(),
        };
        Error::new(span, e.to_string())
    })?;
    check_unrollable(&shape).map_err(|e| Error::new(Span::call_site(), e))?;
    Ok(Spec { name, shape })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_shapes_unroll_and_long_blocks_or_vocabularies_do_not() {
        assert_eq!(unrolled_size(&Shape::DEFAULT), 3504 + 2 * 16 * 16 * 16 + 15 * 27);
        let shipped = Shape::parse("embd=32,layers=2,mlp=128").unwrap();
        assert_eq!(unrolled_size(&shipped), 58_613);
        assert!(check_unrollable(&shipped).is_ok());
        // Few weights, but every position's step unrolled over 255 older ones, or a sampler over
        // 65536 entries: both generated gigabytes of text before this limit.
        for long in ["block=256,embd=4,heads=1,mlp=4", "vocab=65536,embd=1,heads=1"] {
            let shape = Shape::parse(long).unwrap();
            assert!(shape.weight_macs() < MAX_UNROLLED_SIZE, "{long}");
            let err = check_unrollable(&shape).unwrap_err();
            assert!(err.contains("too large to unroll"), "{err}");
        }
    }
}
