//! The fp32 fold: the scalings a kernel folds into its weights when it prepares them, written
//! once for every renderer.

use crate::Weights;
use microgpt_model::Param;

/// The canonical fp32 parameters with the scalings a kernel folds into its weights when it
/// prepares them: with `temperature`, the output head divided by it (the logits come out as
/// `logits / T`, what the sampler exponentiates); with `base2_queries`, every layer's query
/// weights multiplied by [`base2_query_scale`] (the attention's scores come out in base 2).
///
/// [`base2_query_scale`]: microgpt_model::numerics::base2_query_scale
pub fn folded_f32(weights: &Weights, temperature: Option<f32>, base2_queries: bool) -> Vec<f32> {
    let shape = weights.shape();
    let layout = weights.layout();
    let mut data = weights.data().to_vec();
    if let Some(t) = temperature {
        data[layout.tensor(Param::LmHead).range()]
            .iter_mut()
            .for_each(|w| *w /= t);
    }
    if base2_queries {
        let scale = microgpt_model::numerics::base2_query_scale(shape);
        for l in 0..shape.layers {
            data[layout.tensor(Param::Wq(l)).range()]
                .iter_mut()
                .for_each(|w| *w *= scale);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use microgpt_model::Shape;

    #[test]
    fn folding_scales_the_output_head_and_the_queries_only() {
        let shape = Shape {
            layers: 2,
            ..Shape::DEFAULT
        };
        let w = Weights::random(shape, 3, 0.3);
        let layout = w.layout();
        let scale = microgpt_model::numerics::base2_query_scale(&shape);
        assert_eq!(folded_f32(&w, None, false), w.data());
        let both = folded_f32(&w, Some(0.5), true);
        let head = folded_f32(&w, Some(0.5), false);
        for t in layout.tensors() {
            let (src, got, got_head) = (&w.data()[t.range()], &both[t.range()], &head[t.range()]);
            let want: Vec<f32> = match t.param {
                Param::LmHead => src.iter().map(|v| v / 0.5).collect(),
                Param::Wq(_) => src.iter().map(|v| v * scale).collect(),
                _ => src.to_vec(),
            };
            assert_eq!(got, want, "{}", t.param);
            let want_head = if t.param == Param::LmHead { &want[..] } else { src };
            assert_eq!(got_head, want_head, "{}", t.param);
        }
    }
}
