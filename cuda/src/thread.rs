//! Thread ops: the op list as straight-line scalar code for one thread (`mg_streams`).

use crate::plan::transposed;
use crate::source::{buffer_name, param_macro};
use microgpt_model::{Buffer, Layout, Op, Param, Shape};

/// One op as scalar code over the thread's register arrays.
pub(crate) fn thread_op(shape: &Shape, op: &Op) -> String {
    let n = buffer_name;
    let e = shape.embd;
    let unroll = "#pragma unroll";
    match *op {
        Op::Embed { out } => format!(
            "    {unroll}\n    for (int i = 0; i < {e}; i++) {o}[i] = w[MG_W_WTE + tok * {e} + i] + w[MG_W_WPE + pos * {e} + i];",
            o = n(out)
        ),
        Op::RmsNorm { input, out } => format!(
            "    {{\n        float ss = 0.0f;\n        {unroll}\n        for (int i = 0; i < {e}; i++) ss += {x}[i] * {x}[i];\n        \
             const float scale = MG_RMS_FACTOR(ss);\n        {unroll}\n        \
             for (int i = 0; i < {e}; i++) {o}[i] = {x}[i] * scale;\n    }}",
            x = n(input),
            o = n(out)
        ),
        Op::MatVec { weight, input, out } => thread_matvec(shape, weight, input, out),
        Op::Logits { input } => thread_matvec(shape, Param::LmHead, input, Buffer::Logits),
        Op::Attention { layer, q, k, v, out } => format!(
            "    mg_t_attention<{e}, {}, S, P>(kv + {} * S, kv + {} * S, skv + {} * P * S, skv + {} * P * S, {}, {}, pos);  // {} and {} are in the cache",
            shape.heads,
            2 * layer * shape.block * e,
            (2 * layer + 1) * shape.block * e,
            2 * layer * e,
            (2 * layer + 1) * e,
            n(q),
            n(out),
            n(k),
            n(v),
        ),
        Op::Add { input, into } => format!(
            "    {unroll}\n    for (int i = 0; i < {}; i++) {o}[i] += {x}[i];",
            into.len(shape),
            o = n(into),
            x = n(input)
        ),
        Op::Relu { buf } => format!(
            "    {unroll}\n    for (int i = 0; i < {}; i++) {b}[i] = fmaxf({b}[i], 0.0f);",
            buf.len(shape),
            b = n(buf)
        ),
    }
}

/// When op `i` makes the key or value vector of a later attention op (nothing writing it in
/// between), the thread step stores it in that layer's cache right away, so that it need not stay
/// in registers until the attention (the attention op itself stores nothing).
pub(crate) fn thread_cache_store(shape: &Shape, ops: &[Op], i: usize) -> Option<String> {
    let made = ops[i].output();
    for op in &ops[i + 1..] {
        if let Op::Attention { layer, k, v, .. } = *op {
            let values = if k == made {
                0
            } else if v == made {
                1
            } else {
                continue;
            };
            let at = (2 * layer + values) * shape.block * shape.embd;
            let shared_at = (2 * layer + values) * shape.embd;
            return Some(format!(
                "    mg_t_cache_store<{}, S, P>(kv + {at} * S, skv + {shared_at} * P * S, {}, pos);  // cache[pos] of layer {layer}",
                shape.embd,
                buffer_name(made)
            ));
        }
        if op.output() == made {
            return None;
        }
    }
    None
}

/// `up · x → h; relu(h); down · h → y` (an MLP group, [`Fusion::Mlp`]) as one `mg_t_mlp` call:
/// one loop over the hidden units, so that the hidden vector never has to live in registers (it
/// would not fit beside the rest at larger shapes). `y[r]` still sums its terms in the
/// reference's order.
///
/// [`Fusion::Mlp`]: microgpt_model::Fusion::Mlp
pub(crate) fn thread_mlp(shape: &Shape, ops: &[Op]) -> String {
    let [
        Op::MatVec {
            weight: up, input, ..
        },
        Op::Relu { .. },
        Op::MatVec {
            weight: down, out, ..
        },
    ] = *ops
    else {
        panic!("an MLP group is a matvec, its rectifier and a matvec: {ops:?}")
    };
    let (mlp, cols) = up.dims(shape);
    let (rows, _) = down.dims(shape);
    format!(
        "    mg_t_mlp<{rows}, {cols}, {mlp}, {}>(w + {}, w + {}, {}, {});",
        quads(shape, up) && quads(shape, down),
        param_macro(up),
        param_macro(down),
        buffer_name(input),
        buffer_name(out)
    )
}

fn thread_matvec(shape: &Shape, weight: Param, input: Buffer, out: Buffer) -> String {
    let (rows, cols) = weight.dims(shape);
    format!(
        "    mg_t_matvec<{rows}, {cols}, {}>(w + {}, {}, {});",
        quads(shape, weight),
        param_macro(weight),
        buffer_name(input),
        buffer_name(out)
    )
}

/// Whether the thread kernels may read `p`'s transposed rows four at a time (`float4`): its row
/// count and its offset are multiples of 4, so that every such load is 16-byte aligned (the
/// weights start 16-byte aligned in global and in shared memory).
pub(crate) fn quads(shape: &Shape, p: Param) -> bool {
    let offset = Layout::new(*shape).tensor(p).offset;
    transposed(p) && p.dims(shape).0.is_multiple_of(4) && offset.is_multiple_of(4)
}
