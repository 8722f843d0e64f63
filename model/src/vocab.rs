//! Token ids as text: ids `0..26` are the letters `a..z`, BOS is `vocab - 1`.

use crate::Shape;

/// The character for a token id, or `None` for BOS and for ids without a letter.
pub fn token_char(shape: &Shape, id: usize) -> Option<char> {
    if id >= shape.bos() || id >= 26 {
        return None;
    }
    Some((b'a' + id as u8) as char)
}

/// The token id of a character, or `None` when the shape has no token for it.
pub fn char_token(shape: &Shape, c: char) -> Option<usize> {
    let id = (c as u32).checked_sub('a' as u32)? as usize;
    (c.is_ascii_lowercase() && id < shape.bos()).then_some(id)
}

/// Renders generated tokens as a name: letters as themselves, any other id as `<id>`.
pub fn detokenize(shape: &Shape, tokens: &[usize]) -> String {
    tokens
        .iter()
        .map(|&t| token_char(shape, t).map_or_else(|| format!("<{t}>"), String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_and_bos() {
        let s = Shape::DEFAULT;
        assert_eq!(token_char(&s, 0), Some('a'));
        assert_eq!(token_char(&s, 25), Some('z'));
        assert_eq!(token_char(&s, 26), None);
        assert_eq!(char_token(&s, 'k'), Some(10));
        assert_eq!(char_token(&s, 'A'), None);
        assert_eq!(char_token(&s, '-'), None);
        assert_eq!(detokenize(&s, &[10, 4, 11, 24, 13]), "kelyn");
        let small = Shape::new(4, 4, 4, 1, 1, 4).unwrap();
        assert_eq!(char_token(&small, 'd'), None);
        assert_eq!(detokenize(&small, &[0, 2, 3]), "ac<3>");
    }
}
