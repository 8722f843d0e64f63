//! What the two renderers' attention shares: addressing a layer's cache, storing this
//! position's key and value, the loop over cached positions, and the score pass (each position's
//! per-head scores kept in the scratch rows, with their running maximum). The softmax and the
//! weighted sum that follow differ per precision and stay with each renderer.

use crate::cl::{Cl, LANES};
use crate::fp32::Params;
use crate::state::{StateLayout, padded};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32X4, I32};
use cranelift_codegen::ir::{InstBuilder, Value};

/// One layer's cache rows and the score scratch, as addresses.
pub struct Cache {
    pub keys: Value,
    pub values: Value,
    pub scratch: Value,
    /// Bytes per position.
    pub row: usize,
    /// Vector registers per position.
    pub regs: usize,
}

impl Cache {
    /// Layer `layer`'s rows; stores `k` and `v` (both already in their cached form) at this
    /// step's position.
    pub fn store(
        cl: &mut Cl<'_>,
        lay: &StateLayout,
        p: &Params,
        layer: usize,
        k: &[Value],
        v: &[Value],
    ) -> Cache {
        let s = lay.shape;
        let epad = padded(s.embd);
        let row = epad * 4;
        let at = layer * s.block * row;
        let keys = cl.b.ins().iadd_imm_s(p.base, (lay.keys + at) as i64);
        let values = cl.b.ins().iadd_imm_s(p.base, (lay.values + at) as i64);
        let scratch = cl.b.ins().iadd_imm_s(p.base, lay.scratch as i64);
        let here_k = cl.index(keys, p.pos, row);
        let here_v = cl.index(values, p.pos, row);
        for (i, (&kv, &vv)) in k.iter().zip(v).enumerate() {
            cl.store(kv, here_k, 16 * i);
            cl.store(vv, here_v, 16 * i);
        }
        Cache {
            keys,
            values,
            scratch,
            row,
            regs: epad / LANES,
        }
    }

    /// Pass 1: for every cached position `t` (0 to `p.pos`), `score(cl, key row of t)` gives
    /// the scores (one register per cache register, each head's score over its lanes); they are
    /// stored in scratch row `t`, and their maximum over the positions is returned.
    pub fn scores(
        &self,
        cl: &mut Cl<'_>,
        p: &Params,
        score: &mut dyn FnMut(&mut Cl<'_>, Value) -> Vec<Value>,
    ) -> Vec<Value> {
        let ms: Vec<_> = (0..self.regs).map(|_| cl.b.declare_var(F32X4)).collect();
        let neg_inf = cl.splat_f(f32::NEG_INFINITY);
        for &m in &ms {
            cl.b.def_var(m, neg_inf);
        }
        for_positions(cl, p.pos, &mut |cl, t| {
            let kt = cl.index(self.keys, t, self.row);
            let scores = score(cl, kt);
            let st = cl.index(self.scratch, t, self.row);
            for (i, &sc) in scores.iter().enumerate() {
                cl.store(sc, st, 16 * i);
                let m = cl.b.use_var(ms[i]);
                let m = cl.fmax(m, sc);
                cl.b.def_var(ms[i], m);
            }
        });
        ms.iter().map(|&m| cl.b.use_var(m)).collect()
    }
}

/// `body(cl, t)` for `t` in `0..=last` (i32 values), as a loop.
pub fn for_positions(cl: &mut Cl<'_>, last: Value, body: &mut dyn FnMut(&mut Cl<'_>, Value)) {
    let t = cl.b.declare_var(I32);
    let zero = cl.b.ins().iconst(I32, 0);
    cl.b.def_var(t, zero);
    let (head, inner, exit) = (cl.b.create_block(), cl.b.create_block(), cl.b.create_block());
    cl.b.ins().jump(head, &[]);
    cl.b.switch_to_block(head);
    let tv = cl.b.use_var(t);
    let done = cl.b.ins().icmp(IntCC::SignedGreaterThan, tv, last);
    cl.b.ins().brif(done, exit, &[], inner, &[]);
    cl.b.switch_to_block(inner);
    body(cl, tv);
    let next = cl.b.ins().iadd_imm_s(tv, 1);
    cl.b.def_var(t, next);
    cl.b.ins().jump(head, &[]);
    cl.b.switch_to_block(exit);
}
