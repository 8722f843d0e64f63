//! The fp32 renderer: the op list as one Cranelift function per token, fully unrolled over the
//! shape with f32x4 vectors and fused multiply-adds.
//!
//! As in the proc-macro kernels: RMSNorm factors travel with the values they scale and are
//! applied where a value must be materialised, and every attention head's score is replicated
//! over the head's lanes so the softmax is vertical. Attention loops over cached positions.

use crate::attn::{Cache, for_positions};
use crate::cl::{Cl, LANES};
use crate::state::{StateLayout, padded};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4};
use cranelift_codegen::ir::{BlockArg, InstBuilder, SourceLoc, Value};
use microgpt_model::numerics::rms_factor;
use microgpt_model::{Buffer, Op, Param, Program};
use std::collections::HashMap;

/// A buffer's registers and the pending RMSNorm factor (an f32 value) they still carry.
#[derive(Clone)]
struct Val {
    regs: Vec<Value>,
    scale: Option<Value>,
}

/// The function's parameters.
pub struct Params {
    pub base: Value,
    pub tok: Value,
    pub pos: Value,
    pub r: Value,
}

/// Renders the whole step into `cl`, returning the drawn token (i32).
pub fn render(cl: &mut Cl<'_>, program: &Program, lay: &StateLayout, p: &Params) -> Value {
    let s = *program.shape();
    let mut vals: HashMap<Buffer, Val> = HashMap::new();
    // Σx² of registers already reduced (the two RMSNorms at the start share their input).
    let mut squares: HashMap<Vec<Value>, Value> = HashMap::new();
    for (index, op) in program.ops().iter().enumerate() {
        cl.b.set_srcloc(SourceLoc::new(index as u32));
        let (made, val) = match *op {
            Op::Embed { out } => (out, embed(cl, lay, p)),
            Op::RmsNorm { input, out } => (out, rmsnorm(cl, &vals[&input], s.embd, &mut squares)),
            Op::MatVec { weight, input, out } => {
                let x = &vals[&input];
                let regs = matvec(cl, lay, p.base, weight, &x.regs);
                (out, Val { regs, scale: x.scale })
            }
            Op::Logits { input } => (Buffer::Logits, logits(cl, lay, p.base, &vals[&input])),
            Op::Relu { buf } => (buf, relu(cl, &vals[&buf])),
            Op::Add { input, into } => (into, add(cl, &vals[&input], &vals[&into])),
            Op::Attention { layer, q, k, v, out } => {
                let [q, k, v] = [q, k, v].map(|b| materialise(cl, &vals[&b]));
                let regs = attention(cl, lay, p, layer, &q, &k, &v);
                (out, Val { regs, scale: None })
            }
        };
        vals.insert(made, val);
    }
    cl.b.set_srcloc(SourceLoc::new(program.ops().len() as u32));
    let logits = vals[&Buffer::Logits].regs.clone();
    for (i, &v) in logits.iter().enumerate() {
        cl.store(v, p.base, lay.logits + 16 * i);
    }
    sample(cl, s.vocab, &logits, p.r)
}

/// `x = wte[tok] + wpe[pos]`.
fn embed(cl: &mut Cl<'_>, lay: &StateLayout, p: &Params) -> Val {
    let row = padded(lay.shape.embd) * 4;
    let (wte, wpe) = embedding_rows(cl, lay, p, row);
    let regs = (0..row / 16)
        .map(|i| {
            let a = cl.load(F32X4, wte, 16 * i);
            let b = cl.load(F32X4, wpe, 16 * i);
            cl.fadd(a, b)
        })
        .collect();
    Val { regs, scale: None }
}

/// The addresses of row `tok` of `wte` and row `pos` of `wpe`, rows of `row` bytes.
pub fn embedding_rows(cl: &mut Cl<'_>, lay: &StateLayout, p: &Params, row: usize) -> (Value, Value) {
    let wte = cl.b.ins().iadd_imm_s(p.base, lay.weight(Param::Wte) as i64);
    let wte = cl.index(wte, p.tok, row);
    let wpe = cl.b.ins().iadd_imm_s(p.base, lay.weight(Param::Wpe) as i64);
    let wpe = cl.index(wpe, p.pos, row);
    (wte, wpe)
}

/// RMSNorm as a deferred factor on `x`'s registers (`squares`: sums of squares already made).
fn rmsnorm(cl: &mut Cl<'_>, x: &Val, n: usize, squares: &mut HashMap<Vec<Value>, Value>) -> Val {
    let ss = match squares.get(&x.regs) {
        Some(&ss) => ss,
        None => {
            let sq: Vec<Value> = x.regs.iter().map(|&v| cl.fmul(v, v)).collect();
            let sq = tree(cl, sq, |cl, a, b| cl.fadd(a, b));
            let ss = cl.hsum(sq);
            squares.insert(x.regs.clone(), ss);
            ss
        }
    };
    let scale = rms_factor(cl, ss, n, x.scale);
    Val {
        regs: x.regs.clone(),
        scale: Some(scale),
    }
}

/// `logits = lm_head · x`, the pending factor applied.
fn logits(cl: &mut Cl<'_>, lay: &StateLayout, base: Value, x: &Val) -> Val {
    let mut regs = matvec(cl, lay, base, Param::LmHead, &x.regs);
    if let Some(c) = x.scale {
        let c = cl.b.ins().splat(F32X4, c);
        regs = regs.into_iter().map(|v| cl.fmul(v, c)).collect();
    }
    Val { regs, scale: None }
}

/// `relu(x)`; a pending factor is positive, so it stays pending.
fn relu(cl: &mut Cl<'_>, x: &Val) -> Val {
    let zero = cl.splat_f(0.0);
    let regs = x.regs.iter().map(|&v| cl.fmax(v, zero)).collect();
    Val { regs, scale: x.scale }
}

/// `into + input`, both pending factors applied.
fn add(cl: &mut Cl<'_>, a: &Val, b: &Val) -> Val {
    let base = materialise(cl, b);
    let regs = match a.scale {
        Some(c) => {
            let c = cl.b.ins().splat(F32X4, c);
            a.regs.iter().zip(base).map(|(&x, y)| cl.fma(x, c, y)).collect()
        }
        None => a.regs.iter().zip(base).map(|(&x, y)| cl.fadd(x, y)).collect(),
    };
    Val { regs, scale: None }
}

fn materialise(cl: &mut Cl<'_>, v: &Val) -> Vec<Value> {
    match v.scale {
        None => v.regs.clone(),
        Some(c) => {
            let c = cl.b.ins().splat(F32X4, c);
            v.regs.iter().map(|&x| cl.fmul(x, c)).collect()
        }
    }
}

/// Combines values pairwise, as a balanced tree.
pub fn tree(cl: &mut Cl<'_>, mut terms: Vec<Value>, f: impl Fn(&mut Cl<'_>, Value, Value) -> Value) -> Value {
    while terms.len() > 1 {
        let mut next = Vec::with_capacity(terms.len().div_ceil(2));
        for pair in terms.chunks(2) {
            next.push(if pair.len() == 2 {
                f(cl, pair[0], pair[1])
            } else {
                pair[0]
            });
        }
        terms = next;
    }
    terms[0]
}

/// How many accumulators a matvec keeps at once: with the loaded weight and the broadcast input
/// they fit the sixteen 128-bit registers, so nothing spills.
pub const ACCUMULATORS: usize = 12;

/// `W · x` over prepared columns. The input is spilled to `xbuf` and each element broadcast from
/// memory as it is needed; the output vectors are computed a group at a time, each as a few
/// chains of fused multiply-adds.
fn matvec(cl: &mut Cl<'_>, lay: &StateLayout, base: Value, weight: Param, x: &[Value]) -> Vec<Value> {
    let placed = lay.plan.get(weight).clone();
    let (rows, cols) = (placed.rows, placed.cols);
    let rows_pad = padded(rows);
    let out_regs = rows_pad / LANES;
    let w = lay.weight(weight);
    for (i, &v) in x.iter().enumerate() {
        cl.store(v, base, lay.xbuf + 16 * i);
    }
    let chains = (ACCUMULATORS / out_regs).clamp(1, 4).min(cols);
    let group = (ACCUMULATORS / chains).max(1);
    let mut out = Vec::with_capacity(out_regs);
    for first in (0..out_regs).step_by(group) {
        let regs = first..(first + group).min(out_regs);
        let mut accs: Vec<Vec<Option<Value>>> = vec![vec![None; chains]; regs.len()];
        for c in 0..cols {
            let xc = cl.load(F32, base, lay.xbuf + 4 * c);
            let b = cl.b.ins().splat(F32X4, xc);
            for (k, o) in regs.clone().enumerate() {
                let wv = cl.load(F32X4, base, w + 4 * (c * rows_pad + o * LANES));
                let slot = &mut accs[k][c % chains];
                *slot = Some(match *slot {
                    None => cl.fmul(b, wv),
                    Some(a) => cl.fma(b, wv, a),
                });
            }
        }
        for acc in accs {
            let terms = acc.into_iter().flatten().collect();
            out.push(tree(cl, terms, |cl, a, b| cl.fadd(a, b)));
        }
    }
    out
}

/// Sums each head's lanes, leaving the sum in all of them (`hd` lanes per head, `embd` lanes
/// in use; the padding lanes keep their zeros).
pub fn reduce_heads(
    cl: &mut Cl<'_>,
    prods: &[Value],
    hd: usize,
    embd: usize,
    add: impl Fn(&mut Cl<'_>, Value, Value) -> Value,
) -> Vec<Value> {
    if hd.is_power_of_two() {
        let per_head = (hd / LANES).max(1);
        let mut out = Vec::new();
        for group in prods.chunks(per_head) {
            let mut acc = tree(cl, group.to_vec(), &add);
            let mut d = 1;
            while d < hd.min(LANES) {
                let s = cl.swap(acc, d);
                acc = add(cl, acc, s);
                d *= 2;
            }
            out.extend(std::iter::repeat_n(acc, per_head));
        }
        return out;
    }
    // Heads straddle vectors: gather each head's lanes, sum, spread the sum back.
    let ty = cl.b.func.dfg.value_type(prods[0]);
    let lanes: Vec<Value> = prods
        .iter()
        .flat_map(|&v| (0..LANES).map(move |i| (v, i)))
        .map(|(v, i)| cl.lane(v, i))
        .collect();
    let mut sums = Vec::new();
    for h in 0..embd / hd {
        let s = tree(cl, lanes[h * hd..h * hd + hd].to_vec(), |cl, a, b| {
            if ty == F32X4 {
                cl.b.ins().fadd(a, b)
            } else {
                cl.b.ins().iadd(a, b)
            }
        });
        sums.push(s);
    }
    prods
        .iter()
        .enumerate()
        .map(|(reg, &v)| {
            let mut out = v;
            for i in 0..LANES {
                let channel = reg * LANES + i;
                if channel < embd {
                    out = cl.b.ins().insertlane(out, sums[channel / hd], i as u8);
                }
            }
            out
        })
        .collect()
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
    let cache = Cache::store(cl, lay, p, layer, k, v);
    let r = cache.regs;
    // At position 0 the softmax of one score is exactly 1: the output is the value itself.
    let (general, join) = (cl.b.create_block(), cl.b.create_block());
    for _ in 0..r {
        cl.b.append_block_param(join, F32X4);
    }
    let first = cl.b.ins().icmp_imm_s(IntCC::Equal, p.pos, 0);
    let v_args: Vec<BlockArg> = v.iter().map(|&x| BlockArg::Value(x)).collect();
    cl.b.ins().brif(first, join, &v_args, general, &[]);
    cl.b.switch_to_block(general);
    let inv_sqrt = cl.splat_f(1.0 / (hd as f32).sqrt());
    let q: Vec<Value> = q.iter().map(|&x| cl.fmul(x, inv_sqrt)).collect();

    // Pass 1: scores (stored) and their running max.
    let m = cache.scores(cl, p, &mut |cl, kt| {
        let prods: Vec<Value> = (0..r)
            .map(|i| {
                let kv = cl.load(F32X4, kt, 16 * i);
                cl.fmul(q[i], kv)
            })
            .collect();
        reduce_heads(cl, &prods, hd, s.embd, |cl, a, b| cl.fadd(a, b))
    });

    // Pass 2: exponentials, their sum, and the weighted sum of values.
    let sums: Vec<_> = (0..r).map(|_| cl.b.declare_var(F32X4)).collect();
    let accs: Vec<_> = (0..r).map(|_| cl.b.declare_var(F32X4)).collect();
    let zero = cl.splat_f(0.0);
    for i in 0..r {
        cl.b.def_var(sums[i], zero);
        cl.b.def_var(accs[i], zero);
    }
    for_positions(cl, p.pos, &mut |cl, tv| {
        let st = cl.index(cache.scratch, tv, cache.row);
        let vt = cl.index(cache.values, tv, cache.row);
        for i in 0..r {
            let sc = cl.load(F32X4, st, 16 * i);
            let d = cl.fsub(sc, m[i]);
            let e = cl.exp(d, true);
            let sum = cl.b.use_var(sums[i]);
            let sum = cl.fadd(sum, e);
            cl.b.def_var(sums[i], sum);
            let vv = cl.load(F32X4, vt, 16 * i);
            let acc = cl.b.use_var(accs[i]);
            let acc = cl.fma(e, vv, acc);
            cl.b.def_var(accs[i], acc);
        }
    });
    let one = cl.splat_f(1.0);
    let out: Vec<BlockArg> = (0..r)
        .map(|i| {
            let acc = cl.b.use_var(accs[i]);
            let sum = cl.b.use_var(sums[i]);
            let inv = cl.fdiv(one, sum);
            BlockArg::Value(cl.fmul(acc, inv))
        })
        .collect();
    cl.b.ins().jump(join, &out);
    cl.b.switch_to_block(join);
    cl.b.block_params(join).to_vec()
}

/// The sampler over logits already divided by the temperature (folded into the output head at
/// prepare time): `e = exp(z - max z)`, a prefix sum in registers, and the count of running sums
/// at or below `r · Σe` among the first `vocab - 1` ids, which is the drawn id.
pub fn sample(cl: &mut Cl<'_>, vocab: usize, z: &[Value], r: Value) -> Value {
    let valid = |i: usize| vocab.saturating_sub(i * LANES).min(LANES);
    let masked: Vec<Value> = z
        .iter()
        .enumerate()
        .map(|(i, &v)| cl.keep_lanes(v, valid(i), f32::NEG_INFINITY))
        .collect();
    let mx = tree(cl, masked, |cl, a, b| cl.fmax(a, b));
    let m = cl.all_max(mx);
    let exps: Vec<Value> = z
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = cl.fsub(v, m);
            let e = cl.exp(d, true);
            cl.keep_lanes(e, valid(i), 0.0)
        })
        .collect();
    let total = tree(cl, exps.clone(), |cl, a, b| cl.fadd(a, b));
    let total = cl.all_sum(total);
    let rv = cl.b.ins().splat(F32X4, r);
    let thr = cl.fmul(rv, total);
    let mut carry: Option<Value> = None;
    let mut count: Option<Value> = None;
    for (i, &e) in exps.iter().enumerate() {
        let s1 = cl.shift_up(e, 1);
        let c = cl.fadd(e, s1);
        let s2 = cl.shift_up(c, 2);
        let mut c = cl.fadd(c, s2);
        if let Some(prev) = carry {
            let last = cl.broadcast(prev, LANES - 1);
            c = cl.fadd(c, last);
        }
        carry = Some(c);
        let scanned = (vocab - 1).saturating_sub(i * LANES).min(LANES);
        if scanned == 0 {
            continue;
        }
        let le = cl.le_mask(c, thr);
        let keep = cl.lane_mask(scanned);
        let le = cl.b.ins().band(le, keep);
        count = Some(match count {
            None => le,
            Some(acc) => cl.b.ins().iadd(acc, le),
        });
    }
    // Each counted lane holds -1: the negated lane sum is the count.
    let count = count.expect("vocab >= 2");
    let mut total = cl.lane(count, 0);
    for i in 1..LANES {
        let x = cl.lane(count, i);
        total = cl.b.ins().iadd(total, x);
    }
    cl.b.ins().ineg(total)
}
