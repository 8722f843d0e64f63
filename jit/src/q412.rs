//! The Q4.12 renderer: the op list in the scalar Q4.12 reference's arithmetic, as one Cranelift
//! function per token. Matvecs are i16x8 widening pairwise dot products (`pmaddwd` on x86,
//! `smull`/`addp` on aarch64); the float parts repeat the reference's IEEE operations in its
//! order, so every integer matches it bit for bit.

use crate::attn::{Cache, for_positions};
use crate::cl::{Cl, LANES, Lanes};
use crate::fp32::{ACCUMULATORS, Params, embedding_rows, reduce_heads, sample};
use crate::state::{StateLayout, padded};
use cranelift_codegen::ir::types::{F32X4, I16X8, I32, I32X4};
use cranelift_codegen::ir::{InstBuilder, SourceLoc, Value};
use microgpt_model::numerics::{Q412_ONE, q412_real, q412_rms_scale, q412_rms_value, q412_score_scale};
use microgpt_model::{Buffer, Op, Param, Program};
use std::collections::HashMap;

/// Renders the whole step; `inv_temperature` is folded in as a constant.
pub fn render(
    cl: &mut Cl<'_>,
    program: &Program,
    lay: &StateLayout,
    p: &Params,
    inv_temperature: f32,
) -> Value {
    let s = *program.shape();
    let mut vals: HashMap<Buffer, Vec<Value>> = HashMap::new();
    for (index, op) in program.ops().iter().enumerate() {
        cl.b.set_srcloc(SourceLoc::new(index as u32));
        match *op {
            Op::Embed { out } => {
                let row = padded(s.embd) * 2;
                let (wte, wpe) = embedding_rows(cl, lay, p, row);
                let regs = (0..row / 8)
                    .map(|i| {
                        let a = cl.load_i16x4(wte, 8 * i);
                        let b = cl.load_i16x4(wpe, 8 * i);
                        let sum = cl.b.ins().iadd(a, b);
                        cl.wrap16(sum)
                    })
                    .collect();
                vals.insert(out, regs);
            }
            Op::RmsNorm { input, out } => {
                let x = vals[&input].clone();
                let regs = rmsnorm(cl, &x, s.embd);
                vals.insert(out, regs);
            }
            Op::MatVec { weight, input, out } => {
                let x = vals[&input].clone();
                let regs = matvec(cl, lay, p.base, weight, &x);
                vals.insert(out, regs);
            }
            Op::Logits { input } => {
                let x = vals[&input].clone();
                let regs = matvec(cl, lay, p.base, Param::LmHead, &x);
                vals.insert(Buffer::Logits, regs);
            }
            Op::Relu { buf } => {
                let zero = cl.splat_i(0);
                let regs = vals[&buf]
                    .clone()
                    .into_iter()
                    .map(|v| cl.b.ins().smax(v, zero))
                    .collect();
                vals.insert(buf, regs);
            }
            Op::Add { input, into } => {
                let (a, b) = (vals[&input].clone(), vals[&into].clone());
                let regs = a
                    .into_iter()
                    .zip(b)
                    .map(|(x, y)| {
                        let sum = cl.b.ins().iadd(x, y);
                        cl.sat16(sum)
                    })
                    .collect();
                vals.insert(into, regs);
            }
            Op::Attention { layer, q, k, v, out } => {
                let (q, k, v) = (vals[&q].clone(), vals[&k].clone(), vals[&v].clone());
                let regs = attention(cl, lay, p, layer, &q, &k, &v);
                vals.insert(out, regs);
            }
        }
    }
    cl.b.set_srcloc(SourceLoc::new(program.ops().len() as u32));
    let inv_one = cl.splat_f(1.0 / Q412_ONE);
    let inv_t = cl.splat_f(inv_temperature);
    let mut z = Vec::new();
    for (i, &l) in vals[&Buffer::Logits].iter().enumerate() {
        let f = cl.i32_to_f32(l);
        let f = cl.fmul(f, inv_one);
        cl.store(f, p.base, lay.logits + 16 * i);
        z.push(cl.fmul(f, inv_t));
    }
    sample(cl, s.vocab, &z, p.r)
}

/// RMSNorm as the reference computes it: squares summed left to right in f32, the scale
/// ([`q412_rms_scale`]), each value ([`q412_rms_value`]) rounded half to even and saturated.
fn rmsnorm(cl: &mut Cl<'_>, x: &[Value], n: usize) -> Vec<Value> {
    let fx: Vec<Value> = x
        .iter()
        .map(|&v| {
            let f = cl.i32_to_f32(v);
            q412_real(&mut Lanes(cl), f)
        })
        .collect();
    let mut ms = cl.f32(0.0);
    for i in 0..n {
        let sq = cl.fmul(fx[i / LANES], fx[i / LANES]);
        let lane = cl.lane(sq, i % LANES);
        ms = cl.b.ins().fadd(ms, lane);
    }
    let scale = q412_rms_scale(cl, ms, n);
    let scale = cl.b.ins().splat(F32X4, scale);
    fx.into_iter()
        .map(|f| {
            let y = q412_rms_value(&mut Lanes(cl), f, scale);
            cl.round_sat16(y)
        })
        .collect()
}

/// `SAT16(Σ W·x >> 12)` with i16 pair products: each 32-bit lane of a weight vector holds one
/// row's two weights of a column pair, the pair of inputs is broadcast (from memory, where the
/// input is spilled as i16), and the widening pairwise dot product gives four rows' partial sums
/// at once. Output vectors a group at a time, as in the fp32 renderer.
fn matvec(cl: &mut Cl<'_>, lay: &StateLayout, base: Value, weight: Param, x: &[Value]) -> Vec<Value> {
    let placed = lay.plan.get(weight).clone();
    let (rows, cols) = (placed.rows, placed.cols);
    let rows_pad = padded(rows);
    let w = lay.weight(weight);
    // The inputs as i16: two i32x4 narrow to one i16x8 (values are in range, so exact).
    let zero = cl.splat_i(0);
    for (i, c) in x.chunks(2).enumerate() {
        let hi = if c.len() == 2 { c[1] } else { zero };
        let v = cl.b.ins().snarrow(c[0], hi);
        cl.store(v, base, lay.xbuf + 16 * i);
    }
    let pairs = cols.div_ceil(2);
    let out_regs = rows_pad / LANES;
    let chains = (ACCUMULATORS / out_regs).clamp(1, 4).min(pairs);
    let group = (ACCUMULATORS / chains).max(1);
    let mut out = Vec::with_capacity(out_regs);
    for first in (0..out_regs).step_by(group) {
        let regs = first..(first + group).min(out_regs);
        let mut accs: Vec<Vec<Option<Value>>> = vec![vec![None; chains]; regs.len()];
        for pr in 0..pairs {
            let pair = cl.load(I32, base, lay.xbuf + 4 * pr);
            let b = cl.b.ins().splat(I32X4, pair);
            let b = cl.bitcast(I16X8, b);
            for (k, o) in regs.clone().enumerate() {
                let wv = cl.load(I16X8, base, w + 2 * ((pr * rows_pad + o * LANES) * 2));
                let lo = {
                    let a = cl.b.ins().swiden_low(wv);
                    let c = cl.b.ins().swiden_low(b);
                    cl.b.ins().imul(a, c)
                };
                let hi = {
                    let a = cl.b.ins().swiden_high(wv);
                    let c = cl.b.ins().swiden_high(b);
                    cl.b.ins().imul(a, c)
                };
                let dot = cl.b.ins().iadd_pairwise(lo, hi);
                let slot = &mut accs[k][pr % chains];
                *slot = Some(match *slot {
                    None => dot,
                    Some(a) => cl.b.ins().iadd(a, dot),
                });
            }
        }
        for acc in accs {
            let terms: Vec<Value> = acc.into_iter().flatten().collect();
            let sum = crate::fp32::tree(cl, terms, |cl, a, b| cl.b.ins().iadd(a, b));
            let sh = cl.b.ins().sshr_imm_s(sum, 12);
            out.push(cl.sat16(sh));
        }
    }
    out
}

fn attention(
    cl: &mut Cl<'_>,
    lay: &StateLayout,
    p: &Params,
    layer: usize,
    q: &[Value],
    k: &[Value],
    v: &[Value],
) -> Vec<Value> {
    let s = lay.shape;
    let hd = s.head_dim();
    // Values are cached as reals (`q412_real`), keys as the integers.
    let inv_one = cl.splat_f(1.0 / Q412_ONE);
    let v: Vec<Value> = v
        .iter()
        .map(|&x| {
            let f = cl.i32_to_f32(x);
            cl.fmul(f, inv_one)
        })
        .collect();
    let cache = Cache::store(cl, lay, p, layer, k, &v);
    let r = cache.regs;
    // `q412_score`, its constants made once, outside the loop over positions.
    let unit = cl.splat_f(1.0 / (Q412_ONE * Q412_ONE));
    let inv_sqrt = cl.splat_f(q412_score_scale(hd));

    // Pass 1: exact dots per head, scaled scores (stored), their max.
    let m = cache.scores(cl, p, &mut |cl, kt| {
        let prods: Vec<Value> = (0..r)
            .map(|i| {
                let kv = cl.load(I32X4, kt, 16 * i);
                cl.b.ins().imul(q[i], kv)
            })
            .collect();
        let dots = reduce_heads(cl, &prods, hd, s.embd, |cl, a, b| cl.b.ins().iadd(a, b));
        dots.iter()
            .map(|&d| {
                let f = cl.i32_to_f32(d);
                let f = cl.fmul(f, unit);
                cl.fmul(f, inv_sqrt)
            })
            .collect()
    });

    // Pass 2: exponentials (stored over the scores) and their sum, in position order.
    let sums: Vec<_> = (0..r).map(|_| cl.b.declare_var(F32X4)).collect();
    let zero = cl.splat_f(0.0);
    for &sv in &sums {
        cl.b.def_var(sv, zero);
    }
    for_positions(cl, p.pos, &mut |cl, tv| {
        let st = cl.index(cache.scratch, tv, cache.row);
        for i in 0..r {
            let sc = cl.load(F32X4, st, 16 * i);
            let d = cl.fsub(sc, m[i]);
            let e = cl.exp(d, false);
            cl.store(e, st, 16 * i);
            let sum = cl.b.use_var(sums[i]);
            let sum = cl.fadd(sum, e);
            cl.b.def_var(sums[i], sum);
        }
    });
    let sums: Vec<Value> = sums.iter().map(|&sv| cl.b.use_var(sv)).collect();

    // Pass 3: o = Σ (e/sum)·V, multiplied and added separately, in position order.
    let accs: Vec<_> = (0..r).map(|_| cl.b.declare_var(F32X4)).collect();
    for &a in &accs {
        cl.b.def_var(a, zero);
    }
    for_positions(cl, p.pos, &mut |cl, tv| {
        let st = cl.index(cache.scratch, tv, cache.row);
        let vt = cl.index(cache.values, tv, cache.row);
        for i in 0..r {
            let e = cl.load(F32X4, st, 16 * i);
            let pr = cl.fdiv(e, sums[i]);
            let vv = cl.load(F32X4, vt, 16 * i);
            let term = cl.fmul(pr, vv);
            let acc = cl.b.use_var(accs[i]);
            let acc = cl.fadd(acc, term);
            cl.b.def_var(accs[i], acc);
        }
    });
    // `q412_units`.
    let full = cl.splat_f(Q412_ONE);
    accs.iter()
        .map(|&a| {
            let acc = cl.b.use_var(a);
            let y = cl.fmul(acc, full);
            cl.round_sat16(y)
        })
        .collect()
}
