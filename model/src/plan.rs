//! The weight plan: how a kernel rearranges the canonical parameters at prepare time (rows,
//! columns, interleaved column pairs, each padded), and the layout of one prefix-table row.
//! Every renderer that lays weights out asks this module; none transposes by hand.

use crate::{Buffer, Layout, Op, Param, Program, Shape};

/// A row-major `rows × cols` matrix as columns (`out[c·rows_pad + r] = w[r][c]`), each
/// column padded with zeros to `rows_pad` rows: what a matvec that broadcasts one input at a
/// time and multiplies it by a whole column wants.
pub fn columns<T: Copy + Default>(w: &[T], rows: usize, cols: usize, rows_pad: usize) -> Vec<T> {
    assert!(rows_pad >= rows && w.len() == rows * cols);
    let mut out = vec![T::default(); cols * rows_pad];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows_pad + r] = w[r * cols + c];
        }
    }
    out
}

/// Pairs of columns interleaved (`out[(p·rows_pad + r)·2 + k] = w[r][2p + k]`, zero
/// padded to `rows_pad` rows and an even column count): for pairwise multiply-adds of i16
/// (`pmaddwd`, `vpdpwssd`), where each 32-bit lane holds one row's two weights.
pub fn column_pairs<T: Copy + Default>(w: &[T], rows: usize, cols: usize, rows_pad: usize) -> Vec<T> {
    assert!(rows_pad >= rows && w.len() == rows * cols);
    let pairs = cols.div_ceil(2);
    let mut out = vec![T::default(); pairs * rows_pad * 2];
    for r in 0..rows {
        for c in 0..cols {
            out[((c / 2) * rows_pad + r) * 2 + c % 2] = w[r * cols + c];
        }
    }
    out
}

/// Row-major with each row padded with zeros to `cols_pad` (embedding tables).
pub fn rows<T: Copy + Default>(w: &[T], rows: usize, cols: usize, cols_pad: usize) -> Vec<T> {
    assert!(cols_pad >= cols && w.len() == rows * cols);
    let mut out = vec![T::default(); rows * cols_pad];
    for r in 0..rows {
        out[r * cols_pad..][..cols].copy_from_slice(&w[r * cols..][..cols]);
    }
    out
}

/// One row of a prefix table (the history-free prefix evaluated for every `(tok, pos)`): the
/// live buffers of [`Program::history_free_prefix`] in order, each padded with zeros to a
/// multiple of `pad` elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixRow {
    /// Ops the table replaces (those before the first attention).
    pub ops: usize,
    /// Each live buffer and its offset in the row (elements).
    pub live: Vec<(Buffer, usize)>,
    /// Elements of a row.
    pub len: usize,
}

impl PrefixRow {
    pub fn new(shape: &Shape, pad: usize) -> PrefixRow {
        let prefix = Program::forward(*shape).history_free_prefix();
        let mut len = 0;
        let live = prefix
            .live
            .iter()
            .map(|&b| {
                let at = len;
                len += b.len(shape).next_multiple_of(pad);
                (b, at)
            })
            .collect();
        PrefixRow {
            ops: prefix.ops,
            live,
            len,
        }
    }
}

/// How a tensor is rearranged at prepare time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrangement {
    /// Row-major, rows padded to `cols_pad` (embedding tables: one row per token or position;
    /// matvecs that multiply whole rows and reduce across lanes).
    Rows { cols_pad: usize },
    /// Column-major, columns padded to `rows_pad` (matvecs that broadcast one input at a time).
    Columns { rows_pad: usize },
    /// Pairs of columns interleaved, padded to `rows_pad` rows (i16 pairwise multiply-adds).
    ColumnPairs { rows_pad: usize },
}

/// One tensor in the prepared buffer.
#[derive(Clone, Debug)]
pub struct Placed {
    pub param: Param,
    pub rows: usize,
    pub cols: usize,
    /// Offset of the tensor in the canonical flat vector.
    pub source: usize,
    pub arrangement: Arrangement,
    /// Offset in the prepared buffer, in elements.
    pub offset: usize,
    pub len: usize,
}

impl Placed {
    /// This tensor, taken from the canonical parameters and rearranged.
    pub fn arranged<T: Copy + Default>(&self, canonical: &[T]) -> Vec<T> {
        let src = &canonical[self.source..self.source + self.rows * self.cols];
        match self.arrangement {
            Arrangement::Rows { cols_pad } => rows(src, self.rows, self.cols, cols_pad),
            Arrangement::Columns { rows_pad } => columns(src, self.rows, self.cols, rows_pad),
            Arrangement::ColumnPairs { rows_pad } => column_pairs(src, self.rows, self.cols, rows_pad),
        }
    }
}

/// Every tensor a kernel reads, in the order placed.
#[derive(Clone, Debug, Default)]
pub struct WeightPlan {
    pub placed: Vec<Placed>,
    pub total: usize,
}

impl WeightPlan {
    /// Places the tensors the ops `ops` of `program` read: embeddings as padded rows, matrices
    /// as `matrix(param)` says. Offsets are aligned to `align` elements.
    pub fn new(
        shape: &Shape,
        ops: &[Op],
        align: usize,
        rows_pad: impl Fn(usize) -> usize,
        matrix: impl Fn(usize, usize) -> Arrangement,
    ) -> WeightPlan {
        let layout = Layout::new(*shape);
        let mut plan = WeightPlan::default();
        let mut place = |param: Param, arrangement: Arrangement| {
            let t = layout.tensor(param);
            let len = match arrangement {
                Arrangement::Rows { cols_pad } => t.rows * cols_pad,
                Arrangement::Columns { rows_pad } => t.cols * rows_pad,
                Arrangement::ColumnPairs { rows_pad } => t.cols.div_ceil(2) * rows_pad * 2,
            };
            plan.placed.push(Placed {
                param,
                rows: t.rows,
                cols: t.cols,
                source: t.offset,
                arrangement,
                offset: plan.total,
                len,
            });
            plan.total += len.next_multiple_of(align);
        };
        for op in ops {
            match *op {
                Op::Embed { .. } => {
                    let cols_pad = rows_pad(shape.embd);
                    place(Param::Wte, Arrangement::Rows { cols_pad });
                    place(Param::Wpe, Arrangement::Rows { cols_pad });
                }
                Op::MatVec { weight, .. } => {
                    let (rows, cols) = weight.dims(shape);
                    place(weight, matrix(rows, cols));
                }
                Op::Logits { .. } => place(Param::LmHead, matrix(shape.vocab, shape.embd)),
                Op::RmsNorm { .. } | Op::Attention { .. } | Op::Add { .. } | Op::Relu { .. } => {}
            }
        }
        plan
    }

    /// The prepared buffer: every placed tensor taken from the canonical parameters and
    /// rearranged, zeros in the padding.
    pub fn arrange<T: Copy + Default>(&self, canonical: &[T]) -> Vec<T> {
        let mut buf = vec![T::default(); self.total];
        for p in &self.placed {
            buf[p.offset..p.offset + p.len].copy_from_slice(&p.arranged(canonical));
        }
        buf
    }

    pub fn get(&self, param: Param) -> &Placed {
        self.placed
            .iter()
            .find(|p| p.param == param)
            .unwrap_or_else(|| panic!("{param} was not placed"))
    }
}

/// Whether attention heads line up with registers of `lanes` lanes, so that in-register swaps
/// reduce each head (otherwise the kernels reduce through memory).
pub fn heads_aligned(shape: &Shape, lanes: usize) -> bool {
    lanes == 1 || (shape.embd.is_multiple_of(lanes) && shape.head_dim().is_power_of_two())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        // 2 × 3 matrix [[1,2,3],[4,5,6]].
        let w = [1, 2, 3, 4, 5, 6];
        assert_eq!(columns(&w, 2, 3, 4), [1, 4, 0, 0, 2, 5, 0, 0, 3, 6, 0, 0]);
        assert_eq!(column_pairs(&w, 2, 3, 2), [1, 2, 4, 5, 3, 0, 6, 0]);
        assert_eq!(rows(&w, 2, 3, 4), [1, 2, 3, 0, 4, 5, 6, 0]);
    }

    #[test]
    fn a_prefix_row_places_each_live_buffer_padded() {
        let row = PrefixRow::new(&Shape::DEFAULT, 16);
        assert_eq!(row.ops, 6);
        assert_eq!(row.len, 64);
        assert_eq!(row.live.first(), Some(&(Buffer::Q, 0)));
        assert_eq!(row.live.last(), Some(&(Buffer::X, 48)));
    }
}
