//! What the single-stream renderers (fp32 and Q4.12) start from: the target, the shape and op
//! list, the weight plan of the ops they render, the history-free prefix (replaced by a
//! prepare-time table when `table` is set), and the items rendered so far.

use crate::emit::Body;
use crate::target::Target;
use microgpt_model::plan::{Arrangement, PrefixRow, WeightPlan};
use microgpt_model::{Buffer, HistoryFreePrefix, Op, Program, Shape};
use proc_macro2::{Ident, TokenStream};
use quote::quote;

type T = TokenStream;

pub struct Frame<'a> {
    pub t: Target,
    pub shape: Shape,
    pub program: &'a Program,
    /// Start from a prepare-time table of the history-free prefix.
    pub table: bool,
    pub plan: WeightPlan,
    pub prefix: HistoryFreePrefix,
    pub items: Vec<T>,
}

impl<'a> Frame<'a> {
    /// `align` and `arrange` as [`WeightPlan::new`] takes them; buffers are padded to whole
    /// registers.
    pub fn new(
        t: Target,
        program: &'a Program,
        table: bool,
        align: usize,
        arrange: impl Fn(usize, usize) -> Arrangement,
    ) -> Frame<'a> {
        let shape = *program.shape();
        let prefix = program.history_free_prefix();
        let start = if table { prefix.ops } else { 0 };
        let l = t.lanes();
        let plan = WeightPlan::new(
            &shape,
            &program.ops()[start..],
            align,
            |n| n.next_multiple_of(l),
            arrange,
        );
        Frame {
            t,
            shape,
            program,
            table,
            plan,
            prefix,
            items: Vec::new(),
        }
    }

    pub fn lanes(&self) -> usize {
        self.t.lanes()
    }

    /// The sizes the attention renderers work with: lanes, `embd`, head size, registers holding
    /// `embd` values, and `embd` rounded up to whole registers.
    pub fn attention_dims(&self) -> AttentionDims {
        let e = self.shape.embd;
        AttentionDims {
            l: self.lanes(),
            e,
            hd: self.shape.head_dim(),
            r: self.regs(e),
            epad: self.padded(e),
        }
    }

    /// Registers holding `n` values.
    pub fn regs(&self, n: usize) -> usize {
        n.div_ceil(self.lanes())
    }

    /// `n` rounded up to whole registers.
    pub fn padded(&self, n: usize) -> usize {
        n.next_multiple_of(self.lanes())
    }

    /// One row of the prefix table: each live buffer padded to whole registers.
    fn prefix_row(&self) -> PrefixRow {
        PrefixRow::new(&self.shape, self.lanes())
    }

    /// Elements of one row of the prefix table.
    pub fn table_row(&self) -> usize {
        self.prefix_row().len
    }

    /// The index of the first op rendered, and the ops from there on.
    pub fn ops(&self) -> (usize, Vec<Op>) {
        let start = if self.table { self.prefix.ops } else { 0 };
        (start, self.program.ops()[start..].to_vec())
    }

    /// The op that reads the prefix table's row for (tok, pos): `elem` is the table's element
    /// type, `load(ptr)` one register's load, `reg` the register type, and `how` says how the
    /// table was computed. Binds every live buffer in `body` and returns them.
    pub fn prefix_table(
        &mut self,
        body: &mut Body,
        attrs: &T,
        elem: T,
        load: impl Fn(T) -> T,
        reg: T,
        how: &str,
    ) -> Vec<(Buffer, Ident)> {
        let mut outs = Vec::new();
        let mut loads = Vec::new();
        let mut tys = Vec::new();
        let row = self.prefix_row();
        for &(b, off) in &row.live {
            let n = b.len(&self.shape);
            let regs: Vec<T> = (0..self.regs(n))
                .map(|i| {
                    let o = off + i * self.lanes();
                    load(quote! { base.add(#o) })
                })
                .collect();
            loads.push(quote! { [#(#regs),*] });
            let r = self.regs(n);
            tys.push(quote! { [#reg; #r] });
            outs.push((b, body.fresh(b.name())));
        }
        let row = row.len;
        let names: Vec<&str> = self.prefix.live.iter().map(|b| b.name()).collect();
        let doc = format!(
            "Ops 0..{} of shape {} (everything before the first attention depends only on the token \
             and the position): one row of the prefix table, computed at prepare time by {how}. \
             Returns {}.",
            self.prefix.ops,
            self.shape,
            names.join(", ")
        );
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn op_prefix_table(table: *const #elem, tok: usize, pos: usize) -> (#(#tys),*) {
                let base = table.add((tok * BLOCK + pos) * #row);
                (#(#loads),*)
            }
        });
        let ids: Vec<&Ident> = outs.iter().map(|(_, id)| id).collect();
        body.push(quote! { let (#(#ids),*) = op_prefix_table(k.table.as_ptr(), tok, pos); });
        outs
    }
}

/// See [`Frame::attention_dims`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub l: usize,
    pub e: usize,
    pub hd: usize,
    pub r: usize,
    pub epad: usize,
}
