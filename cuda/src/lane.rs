//! Lane ops: the op list for one warp with the short vectors whole in every lane's registers
//! (`mg_step_lanes` and its table form).

use crate::source::{buffer_name, param_macro};
use microgpt_model::plan::PrefixRow;
use microgpt_model::{Buffer, Fusion, Layout, Op, Param, Program, Shape};
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
    shape: Shape,
    /// See [`lane_step`].
    whole_inputs: bool,
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
    fn registers(&mut self, b: Buffer) -> String {
        let (name, n) = (buffer_name(b), b.len(&self.shape));
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
pub(crate) fn lane_step(program: &Program, table: Option<&PrefixRow>, whole_inputs: bool) -> (String, usize) {
    let ops = program.ops();
    let mut st = LaneStep {
        shape: *program.shape(),
        whole_inputs,
        text: String::new(),
        homes: vec![None; Buffer::ALL.len()],
        current: 1,
        used: 0,
        synced: true,
        size: 0,
    };
    let mut i = table.map_or(0, |t| st.start_from_table(t));
    while i < ops.len() {
        let op = ops[i];
        let _ = writeln!(st.text, "    // {op}");
        i += 1;
        match op {
            Op::Embed { out } => st.embed(out),
            Op::RmsNorm { input, out } => st.rmsnorm(input, out, i),
            Op::MatVec { .. } => i = st.matvecs(program, i - 1),
            Op::Relu { buf } => {
                panic!("the lane step rectifies {buf:?} only right after the matvec that makes it")
            }
            Op::Attention { layer, q, k, v, out } => st.attention(layer, [q, k, v], out),
            Op::Add { input, into } => st.add(input, into),
            Op::Logits { input } => st.logits(input),
        }
    }
    // The next step writes sh0 first: every lane must be done reading it.
    assert_eq!(st.current, 1, "the lane step ends reading sh1");
    st.text.push_str("    return next;\n");
    (st.text, st.size)
}

impl LaneStep {
    /// Reads the prefix table's row; returns the first op after the prefix.
    fn start_from_table(&mut self, t: &PrefixRow) -> usize {
        let _ = writeln!(
            self.text,
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
            self.homes[b.index()] = Some(LaneHome::Table { at });
        }
        t.ops
    }

    fn embed(&mut self, out: Buffer) {
        let (shape, e) = (self.shape, self.shape.embd);
        let layout = Layout::new(shape);
        let quads = e.is_multiple_of(4)
            && layout.tensor(Param::Wte).offset.is_multiple_of(4)
            && layout.tensor(Param::Wpe).offset.is_multiple_of(4);
        let o = self.registers(out);
        self.written(out);
        let _ = writeln!(self.text, "    mg_l_embed<{e}, {quads}>(w, tok, pos, {o});");
    }

    /// In place, the factor applied; otherwise a factor pending on `input`'s registers (`next`:
    /// the index of the op after this one, which names the factor).
    fn rmsnorm(&mut self, input: Buffer, out: Buffer, next: usize) {
        if matches!(self.home(input), LaneHome::Table { .. }) {
            self.registers(input);
        }
        assert!(
            matches!(self.home(input), LaneHome::Registers),
            "the lane step normalises a vector in registers"
        );
        let x = buffer_name(input);
        let n = input.len(&self.shape);
        if input == out {
            self.written(out);
            let _ = writeln!(
                self.text,
                "    mg_l_scale<{n}>({x}, mg_l_rms_scale<{n}>({x}), {x});"
            );
        } else {
            let scale = format!("{}_scale_{next}", buffer_name(out));
            let _ = writeln!(self.text, "    const float {scale} = mg_l_rms_scale<{n}>({x});");
            self.written(out);
            self.homes[out.index()] = Some(LaneHome::Scaled { of: input, scale });
        }
    }

    /// The matvec at op `at`, with the ones it runs as one: the rest of a group of matvecs of one
    /// input (q, k, v: their outputs side by side, when the rows are a multiple of 4 and none is
    /// rectified next) or the rectifier of its result. Returns the first op not rendered.
    fn matvecs(&mut self, program: &Program, at: usize) -> usize {
        let ops = program.ops();
        let Op::MatVec { weight, input, out } = ops[at] else {
            unreachable!("a matvec at {at}")
        };
        let (rows, cols) = weight.dims(&self.shape);
        let mut next = at + 1;
        let mut outs = vec![out];
        if let Some(group) = program.group(Fusion::SameInput, at)
            && rows.is_multiple_of(4)
        {
            while next < group.end && !matches!(ops.get(next + 1), Some(Op::Relu { .. })) {
                let _ = writeln!(self.text, "    // {} (with the one above)", ops[next]);
                outs.push(ops[next].output());
                next += 1;
            }
        }
        let relu = outs.len() == 1 && program.group(Fusion::MatVecRelu, at).is_some();
        if relu {
            let _ = writeln!(self.text, "    // {} (in the matvec)", ops[next]);
            next += 1;
        }
        let whole = self.whole_inputs && self.home(input).in_memory();
        let split = self.home(input).in_memory() && !whole;
        let (x, scale) = self.operand(input);
        let mut first = None;
        for &o in &outs {
            let (buf, at) = self.alloc(rows);
            first.get_or_insert((buf, at));
            self.written(o);
            self.homes[o.index()] = Some(LaneHome::Shared { buf, at });
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
            self.text,
            "    mg_l_matvec<{all}, {cols}, {split}, {relu}{stacked}>(w + {}, {x}, {scale}, sh{buf} + {at});",
            param_macro(weight)
        );
        next
    }

    fn attention(&mut self, layer: usize, qkv: [Buffer; 3], out: Buffer) {
        let (e, block) = (self.shape.embd, self.shape.block);
        let [q, k, v] = qkv.map(|b| {
            assert!(
                self.home(b).in_memory(),
                "the lane step's attention reads its vectors from memory"
            );
            self.operand(b).0
        });
        let (buf, at) = self.alloc(e);
        self.written(out);
        self.homes[out.index()] = Some(LaneHome::Shared { buf, at });
        let _ = writeln!(
            self.text,
            "    mg_l_attention<{e}, {}>(s + MG_S_KV + {}, s + MG_S_KV + {}, {q}, {k}, {v}, sh{buf} + {at}, pos);",
            self.shape.heads,
            2 * layer * block * e,
            (2 * layer + 1) * block * e,
        );
    }

    fn add(&mut self, input: Buffer, into: Buffer) {
        if matches!(self.home(into), LaneHome::Table { .. }) {
            self.registers(into);
        }
        assert!(
            self.home(input).in_memory() && matches!(self.home(into), LaneHome::Registers),
            "the lane step adds a vector in memory into registers"
        );
        let (x, _) = self.operand(input);
        self.written(into);
        let _ = writeln!(
            self.text,
            "    mg_l_add<{}>({x}, {});",
            into.len(&self.shape),
            buffer_name(into)
        );
    }

    /// `lg = lm_head · x` over the lanes (each lane's rows in `lg`), then the draw.
    fn logits(&mut self, input: Buffer) {
        let vocab = self.shape.vocab;
        let in_memory = self.home(input).in_memory();
        let mode = if self.whole_inputs && in_memory {
            format!("false, {vocab}, true")
        } else {
            in_memory.to_string()
        };
        let (x, scale) = self.operand(input);
        let k = vocab.div_ceil(32);
        let _ = writeln!(
            self.text,
            "    float lg[{k}];\n    mg_w_rows<{vocab}, {}, {mode}>(w + {}, {x}, lg);",
            input.len(&self.shape),
            param_macro(Param::LmHead)
        );
        if scale != "1.0f" {
            let _ = writeln!(
                self.text,
                "    #pragma unroll\n    for (int k = 0; k < {k}; k++) lg[k] *= {scale};"
            );
        }
        let _ = writeln!(
            self.text,
            "    if (logits_out) {{\n        #pragma unroll\n        for (int k = 0; k < {k}; k++) {{\n            \
             const int i = (threadIdx.x & 31) + 32 * k;\n            \
             if ((threadIdx.x & 31) < MG_ROW_LANES({vocab}) && i < {vocab}) logits_out[i] = lg[k];\n        }}\n    }}"
        );
        // The draw writes the logits and then the exponentials, a sync after each; both in
        // sh1 when the logits are there, so that the step ends with sh0 free for the next.
        let (a, at_a) = self.alloc(vocab);
        self.sync_marked();
        let (b, at_b) = if a == 1 {
            self.append(vocab)
        } else {
            self.alloc(vocab)
        };
        self.sync_marked();
        let _ = writeln!(
            self.text,
            "    const int next = mg_l_sample<{vocab}>(lg, sh{a} + {at_a}, sh{b} + {at_b}, r);"
        );
    }
}
