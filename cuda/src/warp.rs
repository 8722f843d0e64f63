//! Warp ops: each op as a call to a one-warp device function over a scratch area.

use crate::source::{buffer_name, param_macro};
use microgpt_model::{Buffer, Op, Param, Shape};

/// One op as a call of a warp device function.
pub(crate) fn warp_op(shape: &Shape, op: &Op) -> String {
    let buf = |b: Buffer| format!("s + MG_S_{}", buffer_name(b).to_uppercase());
    let (e, block) = (shape.embd, shape.block);
    match *op {
        Op::Embed { out } => format!("mg_w_embed<{e}>(w, tok, pos, {});", buf(out)),
        Op::RmsNorm { input, out } => format!("mg_w_rmsnorm<{e}>({}, {});", buf(input), buf(out)),
        Op::MatVec { weight, input, out } => {
            let (rows, cols) = weight.dims(shape);
            format!(
                "mg_w_matvec<{rows}, {cols}>(w + {}, {}, {});",
                param_macro(weight),
                buf(input),
                buf(out)
            )
        }
        Op::Logits { input } => {
            let (rows, cols) = Param::LmHead.dims(shape);
            format!(
                "mg_w_matvec<{rows}, {cols}>(w + {}, {}, {});",
                param_macro(Param::LmHead),
                buf(input),
                buf(Buffer::Logits)
            )
        }
        Op::Attention { layer, q, k, v, out } => format!(
            "mg_w_attention<{e}, {}, {block}>(s + MG_S_KV + {}, s + MG_S_KV + {}, {}, {}, {}, {}, s + MG_S_PROBS, pos);",
            shape.heads,
            2 * layer * block * e,
            (2 * layer + 1) * block * e,
            buf(q),
            buf(k),
            buf(v),
            buf(out)
        ),
        Op::Add { input, into } => {
            format!("mg_w_add<{}>({}, {});", into.len(shape), buf(input), buf(into))
        }
        Op::Relu { buf: b } => format!("mg_w_relu<{}>({});", b.len(shape), buf(b)),
    }
}
