//! The `kernels!` input as written: `name: ident` and `field: integer` pairs, with spans.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitInt, Token};

/// One `key: value` pair.
pub struct Field {
    pub key: Ident,
    pub value: Value,
}

pub enum Value {
    Ident(Ident),
    Int(LitInt),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Ident(i) => i.span(),
            Value::Int(l) => l.span(),
        }
    }
}

/// The whole invocation.
pub struct Input {
    pub fields: Vec<Field>,
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Input> {
        let mut fields = Vec::new();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            let value = if input.peek(LitInt) {
                Value::Int(input.parse()?)
            } else if input.peek(Ident) {
                Value::Ident(input.parse()?)
            } else {
                return Err(input.error(format!("expected a value for `{key}`: a name or an integer")));
            };
            fields.push(Field { key, value });
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(Input { fields })
    }
}
