//! One table per named enum: `named_enum!` declares the enum, `ALL` and
//! `name()` from the same list of `Variant => "name"` pairs, so a variant
//! cannot be added without its name, and parsing walks the same list.

/// `named_enum! { #[attrs] pub enum E { /// doc
/// A (= discriminant)? => "a", ... } }` declares `E` with the variants,
/// `E::ALL` in declaration order and `E::name()`.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident $(= $disc:expr)? => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant $(= $disc)? ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// The variant's name in configs, logs and results.
            pub fn name(&self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }
    };
}
