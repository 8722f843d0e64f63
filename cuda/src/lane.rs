//! Lane ops: the op list for one warp with the short vectors whole in every lane's registers
//! (`mg_step_lanes` and its table form).

use crate::source::{buffer_name, param_macro};
use microgpt_model::plan::PrefixRow;
use microgpt_model::{Buffer, Layout, Op, Param, Shape};
use std::fmt::Write;

/// Where the lane step keeps a buffer.
#[derive(Clone, Debug)]
pub(crate) enum LaneHome {
    /// Whole in every lane's registers, as the array of the buffer's name.
    Registers,
    /// `of` (in registers) times the factor `scale`: an RMSNorm not yet applied.
    Scaled { of: Buffer, scale: String },
    /// Whole in shared buffer `buf` (`sh0`, `sh1`) from float `at`.
    Shared { buf: usize, at: usize },
    /// Whole in the step's row of the prefix table (global memory, `row`), from float `at`.
    Table { at: usize },
}

impl LaneHome {
    /// Whole in memory that every lane reads (shared memory or the table).
    fn in_memory(&self) -> bool {
        matches!(self, LaneHome::Shared { .. } | LaneHome::Table { .. })
    }
}

/// The lane step's bookkeeping of its two shared buffers: a matvec's lanes write their rows into
/// the current one, one `__syncwarp` makes them readable whole, and the next write after that sync
/// goes to the other buffer (or, with [`LaneStep::append`], to the current one past what it
/// holds). So a float is overwritten only after a second sync, which every lane reaches after
/// reading what the first one published; buffers published two syncs ago are gone.
pub(crate) struct LaneStep {
    text: String,
    homes: Vec<Option<LaneHome>>,
    current: usize,
    used: usize,
    synced: bool,
    /// Floats one shared buffer needs (the most either holds at once).
    size: usize,
}

impl LaneStep {
    fn sync(&mut self) {
        self.text.push_str("    __syncwarp();\n");
        self.sync_marked();
    }

    /// The state after a sync (emitted here or inside a device function).
    fn sync_marked(&mut self) {
        self.synced = true;
        let stale = 1 - self.current;
        for h in &mut self.homes {
            if matches!(h, Some(LaneHome::Shared { buf, .. }) if *buf == stale) {
                *h = None;
            }
        }
    }

    /// Room for `len` floats written before the next sync (16-byte aligned).
    fn alloc(&mut self, len: usize) -> (usize, usize) {
        if self.synced {
            self.current = 1 - self.current;
            self.used = 0;
        }
        self.append(len)
    }

    /// Room for `len` floats in the current buffer after what it holds, even past a sync: what is
    /// written there overlaps nothing that a lane may still read.
    fn append(&mut self, len: usize) -> (usize, usize) {
        self.synced = false;
        let at = self.used;
        self.used += len.next_multiple_of(4);
        self.size = self.size.max(self.used);
        (self.current, at)
    }

    fn home(&self, b: Buffer) -> LaneHome {
        self.homes[b.index()]
            .clone()
            .unwrap_or_else(|| panic!("the lane step reads {b:?} where no op left it"))
    }

    /// A whole vector as an operand: (expression, factor).
    fn operand(&mut self, b: Buffer) -> (String, String) {
        match self.home(b) {
            LaneHome::Registers => (buffer_name(b), "1.0f".into()),
            LaneHome::Scaled { of, scale } => (buffer_name(of), scale),
            LaneHome::Shared { buf, at } => {
                if buf == self.current && !self.synced {
                    self.sync();
                }
                (format!("sh{buf} + {at}"), "1.0f".into())
            }
            LaneHome::Table { at } => (format!("row + {at}"), "1.0f".into()),
        }
    }

    /// `b` as a register array, declared on first use (read from the table where it is there).
    fn registers(&mut self, shape: &Shape, b: Buffer) -> String {
        let (name, n) = (buffer_name(b), b.len(shape));
        match self.homes[b.index()] {
            Some(LaneHome::Registers) => {}
            Some(LaneHome::Table { at }) => {
                let _ = writeln!(
                    self.text,
                    "    float {name}[{n}];\n    mg_l_read<{n}>(row + {at}, {name});"
                );
                self.homes[b.index()] = Some(LaneHome::Registers);
            }
            _ => {
                let _ = writeln!(self.text, "    float {name}[{n}];");
                self.homes[b.index()] = Some(LaneHome::Registers);
            }
        }
        name
    }

    /// `b` changes: factors of it pending elsewhere no longer hold.
    fn written(&mut self, b: Buffer) {
        for h in &mut self.homes {
            if matches!(h, Some(LaneHome::Scaled { of, .. }) if *of == b) {
                *h = None;
            }
        }
    }
}

/// The op list as lane ops (see `mg_l_attention` and the others in the prelude): the body of
/// `mg_step_lanes`, and the floats one of its shared buffers needs. With `table`, the body of
/// `mg_step_lanes_table`: the ops after the history-free prefix, which start from the step's row
/// of the prefix table (`row`).
///
/// `whole_inputs`: a matvec whose input is in memory has every lane read it whole (`WHOLE`)
/// instead of splitting its columns between groups of lanes, for a step whose weights stay in
/// registers.
pub(crate) fn lane_step(
    shape: &Shape,
    ops: &[Op],
    table: Option<&PrefixRow>,
    whole_inputs: bool,
) -> (String, usize) {
    let (e, vocab) = (shape.embd, shape.vocab);
    let layout = Layout::new(*shape);
    let mut st = LaneStep {
        text: String::new(),
        homes: vec![None; Buffer::ALL.len()],
        current: 1,
        used: 0,
        synced: true,
        size: 0,
    };
    let mut i = 0;
    if let Some(t) = table {
        let _ = writeln!(
            st.text,
            "    // ops 0..{} from the prefix table: {}\n    \
             const float* const row = w + MG_TABLE + (tok * MG_BLOCK + pos) * MG_TABLE_ROW;",
            t.ops,
            t.live
                .iter()
                .map(|(b, at)| format!("{} at {at}", buffer_name(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for &(b, at) in &t.live {
            st.homes[b.index()] = Some(LaneHome::Table { at });
        }
        i = t.ops;
    }
    while i < ops.len() {
        let op = ops[i];
        let _ = writeln!(st.text, "    // {op}");
        i += 1;
        match op {
            Op::Embed { out } => {
                let quads = e.is_multiple_of(4)
                    && layout.tensor(Param::Wte).offset.is_multiple_of(4)
                    && layout.tensor(Param::Wpe).offset.is_multiple_of(4);
                let o = st.registers(shape, out);
                st.written(out);
                let _ = writeln!(st.text, "    mg_l_embed<{e}, {quads}>(w, tok, pos, {o});");
            }
            Op::RmsNorm { input, out } => {
                if matches!(st.home(input), LaneHome::Table { .. }) {
                    st.registers(shape, input);
                }
                assert!(
                    matches!(st.home(input), LaneHome::Registers),
                    "the lane step normalises a vector in registers"
                );
                let x = buffer_name(input);
                let n = input.len(shape);
                if input == out {
                    st.written(out);
                    let _ = writeln!(
                        st.text,
                        "    mg_l_scale<{n}>({x}, mg_l_rms_scale<{n}>({x}), {x});"
                    );
                } else {
                    let scale = format!("{}_scale_{i}", buffer_name(out));
                    let _ = writeln!(st.text, "    const float {scale} = mg_l_rms_scale<{n}>({x});");
                    st.written(out);
                    st.homes[out.index()] = Some(LaneHome::Scaled { of: input, scale });
                }
            }
            Op::MatVec { weight, input, out } => {
                let (rows, cols) = weight.dims(shape);
                // Matvecs of the same input by matrices stored one after the other (q, k, v) run
                // as one, their outputs side by side.
                let mut outs = vec![out];
                let mut end = layout.tensor(weight).offset + rows * cols;
                while rows.is_multiple_of(4) && out != input {
                    let Some(&Op::MatVec {
                        weight: w2,
                        input: i2,
                        out: o2,
                    }) = ops.get(i)
                    else {
                        break;
                    };
                    let t = layout.tensor(w2);
                    if i2 != input
                        || o2 == input
                        || w2.dims(shape) != (rows, cols)
                        || t.offset != end
                        || outs.contains(&o2)
                    {
                        break;
                    }
                    if matches!(ops.get(i + 1), Some(Op::Relu { .. })) {
                        break;
                    }
                    let _ = writeln!(st.text, "    // {} (with the one above)", ops[i]);
                    outs.push(o2);
                    end += rows * cols;
                    i += 1;
                }
                let relu = matches!(ops.get(i), Some(Op::Relu { buf }) if *buf == out);
                if relu {
                    let _ = writeln!(st.text, "    // {} (in the matvec)", ops[i]);
                    i += 1;
                }
                let whole = whole_inputs && st.home(input).in_memory();
                let split = st.home(input).in_memory() && !whole;
                let (x, scale) = st.operand(input);
                let mut first = None;
                for &o in &outs {
                    let (buf, at) = st.alloc(rows);
                    first.get_or_insert((buf, at));
                    st.written(o);
                    st.homes[o.index()] = Some(LaneHome::Shared { buf, at });
                }
                let (buf, at) = first.expect("one output at least");
                let all = rows * outs.len();
                let stacked = if whole {
                    format!(", {rows}, true")
                } else if outs.len() > 1 {
                    format!(", {rows}")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    st.text,
                    "    mg_l_matvec<{all}, {cols}, {split}, {relu}{stacked}>(w + {}, {x}, {scale}, sh{buf} + {at});",
                    param_macro(weight)
                );
            }
            Op::Relu { buf } => {
                panic!("the lane step rectifies {buf:?} only right after the matvec that makes it")
            }
            Op::Attention { layer, q, k, v, out } => {
                let [q, k, v] = [q, k, v].map(|b| {
                    assert!(
                        st.home(b).in_memory(),
                        "the lane step's attention reads its vectors from memory"
                    );
                    st.operand(b).0
                });
                let (buf, at) = st.alloc(e);
                st.written(out);
                st.homes[out.index()] = Some(LaneHome::Shared { buf, at });
                let _ = writeln!(
                    st.text,
                    "    mg_l_attention<{e}, {}>(s + MG_S_KV + {}, s + MG_S_KV + {}, {q}, {k}, {v}, sh{buf} + {at}, pos);",
                    shape.heads,
                    2 * layer * shape.block * e,
                    (2 * layer + 1) * shape.block * e,
                );
            }
            Op::Add { input, into } => {
                if matches!(st.home(into), LaneHome::Table { .. }) {
                    st.registers(shape, into);
                }
                assert!(
                    st.home(input).in_memory() && matches!(st.home(into), LaneHome::Registers),
                    "the lane step adds a vector in memory into registers"
                );
                let (x, _) = st.operand(input);
                st.written(into);
                let _ = writeln!(
                    st.text,
                    "    mg_l_add<{}>({x}, {});",
                    into.len(shape),
                    buffer_name(into)
                );
            }
            Op::Logits { input } => {
                let in_memory = st.home(input).in_memory();
                let mode = if whole_inputs && in_memory {
                    format!("false, {vocab}, true")
                } else {
                    in_memory.to_string()
                };
                let (x, scale) = st.operand(input);
                let k = vocab.div_ceil(32);
                let _ = writeln!(
                    st.text,
                    "    float lg[{k}];\n    mg_w_rows<{vocab}, {}, {mode}>(w + {}, {x}, lg);",
                    input.len(shape),
                    param_macro(Param::LmHead)
                );
                if scale != "1.0f" {
                    let _ = writeln!(
                        st.text,
                        "    #pragma unroll\n    for (int k = 0; k < {k}; k++) lg[k] *= {scale};"
                    );
                }
                let _ = writeln!(
                    st.text,
                    "    if (logits_out) {{\n        #pragma unroll\n        for (int k = 0; k < {k}; k++) {{\n            \
                     const int i = (threadIdx.x & 31) + 32 * k;\n            \
                     if ((threadIdx.x & 31) < MG_ROW_LANES({vocab}) && i < {vocab}) logits_out[i] = lg[k];\n        }}\n    }}"
                );
                // The draw writes the logits and then the exponentials, a sync after each; both in
                // sh1 when the logits are there, so that the step ends with sh0 free for the next.
                let (a, at_a) = st.alloc(vocab);
                st.sync_marked();
                let (b, at_b) = if a == 1 { st.append(vocab) } else { st.alloc(vocab) };
                st.sync_marked();
                let _ = writeln!(
                    st.text,
                    "    const int next = mg_l_sample<{vocab}>(lg, sh{a} + {at_a}, sh{b} + {at_b}, r);"
                );
            }
        }
    }
    // The next step writes sh0 first: every lane must be done reading it.
    assert_eq!(st.current, 1, "the lane step ends reading sh1");
    st.text.push_str("    return next;\n");
    (st.text, st.size)
}
