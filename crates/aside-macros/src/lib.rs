//! The `#[aside::cached]` attribute. Owns the parsing of the attribute and
//! of the function, and the code that wires the function's body into
//! `Namespace::get_or_load`. Use it through `aside` with the `macros`
//! feature; the generated code calls `aside::macro_support`.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, Ident, ItemFn, LitFloat, LitStr, Pat, PathArguments, ReturnType, Token, Type, parenthesized,
};

/// Caches an async function through an `aside` namespace: the function's
/// body becomes the loader of `Namespace::get_or_load`, so a call first
/// reads the cache and runs the body only on a miss (once per key across
/// concurrent calls), with every guarantee of the namespace: fenced fills,
/// single-flight, fail-open on a sick store.
///
/// ```
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User { id: u64, name: String }
/// # #[derive(Debug, thiserror::Error)] #[error("db")] struct DbError;
/// use aside::Aside;
///
/// #[aside::cached(namespace = "user:profile", key = id, ttl = "10m", aside = cache)]
/// async fn user(cache: &Aside, id: u64) -> Result<Option<User>, DbError> {
///     // The loader: runs on a miss only. `None` (no such row) is not cached.
///     Ok(Some(User { id, name: "Ada".into() }))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
/// let cache = Aside::builder().build();
/// let ada: Option<User> = user(&cache, 1001).await?; // loaded, then cached as "user:profile:1001"
/// assert_eq!(ada.map(|u| u.name).as_deref(), Some("Ada"));
/// # Ok(()) }
/// ```
///
/// # Arguments of the attribute
///
/// - `namespace = "NAME"` (required): the namespace; keys are
///   `"{prefix}NAME:{key}"`. Invalidate with a namespace of the same name
///   and value type: `cache.namespace::<String, User>("user:profile")`.
/// - `key = ARG` or `key = (ARG, ARG, ...)`: the arguments that make the
///   key, each formatted with `Display` (default: every argument but
///   `self` and the `aside` one). One argument is the key as it prints;
///   several are joined by `:` with `%` and `:` escaped in each (`%25`,
///   `%3A`), so `("x:y", "z")` and `("x", "y:z")` are two keys.
/// - Where the `Aside` comes from, exactly one of: `aside = ARG`, an
///   argument of type `Aside` or `&Aside`; or `global`, the `Aside`
///   registered with `aside::global::set` (a call before it is registered
///   returns an `ErrorKind::Config` error).
/// - `ttl = "10m"` (`ms`, `s`, `m`, `h` or `d`), `jitter = 0.1` and
///   `strategy = "lease" | "versioned" | "delete" | "double-delete"`: the
///   namespace's settings (default: the builder's).
///
/// # The function
///
/// It must be a non-generic `async fn` whose arguments are plain names
/// (`id: u64`; a `&self` receiver is allowed) and whose return type is
/// written `Result<T, E>`, with `E: std::error::Error + Send + Sync +
/// 'static` and `T` serialisable (serde), `Clone`, `Send`, `Sync`.
/// The macro changes the return type to `aside::Result<T>`: a loader error
/// comes back as an `aside::Error` of kind `Loader`, whose
/// `loader_error::<E>()` is the body's error. When `T` is `Option<V>`, `V`
/// is what is cached and a `None` is not (unless the namespace caches
/// absent values).
///
/// Each argument is cloned for each run of the body (a miss), so arguments
/// must be `Clone`: pass big ones by reference (`&PgPool`).
///
/// The namespace is built on the first call and kept for the function;
/// a call with a different `Aside` builds a new one and keeps that.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = syn::parse_macro_input!(attr as Attr);
    let function = syn::parse_macro_input!(item as ItemFn);
    expand(attr, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Where the `Aside` comes from.
enum Source {
    /// `aside = ARG`.
    Argument(Ident),
    /// `global`.
    Global(Span),
}

/// The parsed attribute.
#[derive(Default)]
struct Attr {
    namespace: Option<LitStr>,
    key: Option<Vec<Ident>>,
    source: Option<Source>,
    ttl_ms: Option<u64>,
    jitter: Option<LitFloat>,
    strategy: Option<TokenStream2>,
}

const KNOWN: &str = "namespace, key, aside, global, ttl, jitter, strategy";

impl Parse for Attr {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut attr = Attr::default();
        let parser = syn::meta::parser(|meta| {
            let name = meta.path.get_ident().map(Ident::to_string).unwrap_or_default();
            let once = |taken: bool| {
                if taken {
                    Err(meta.error(format!("`{name}` is given twice")))
                } else {
                    Ok(())
                }
            };
            match name.as_str() {
                "namespace" => {
                    once(attr.namespace.is_some())?;
                    attr.namespace = Some(meta.value()?.parse()?);
                }
                "key" => {
                    once(attr.key.is_some())?;
                    let value = meta.value()?;
                    attr.key = Some(if value.peek(syn::token::Paren) {
                        let inside;
                        parenthesized!(inside in value);
                        Punctuated::<Ident, Token![,]>::parse_terminated(&inside)?
                            .into_iter()
                            .collect()
                    } else {
                        vec![value.parse()?]
                    });
                }
                "aside" | "global" => {
                    if attr.source.is_some() {
                        return Err(meta.error("give one source of the Aside: `aside = ARG` or `global`, not both"));
                    }
                    attr.source = Some(if name == "aside" {
                        Source::Argument(meta.value()?.parse()?)
                    } else {
                        Source::Global(meta.path.span())
                    });
                }
                "ttl" => {
                    once(attr.ttl_ms.is_some())?;
                    let literal: LitStr = meta.value()?.parse()?;
                    attr.ttl_ms = Some(parse_duration_ms(&literal)?);
                }
                "jitter" => {
                    once(attr.jitter.is_some())?;
                    attr.jitter = Some(meta.value()?.parse()?);
                }
                "strategy" => {
                    once(attr.strategy.is_some())?;
                    let literal: LitStr = meta.value()?.parse()?;
                    attr.strategy = Some(parse_strategy(&literal)?);
                }
                _ => {
                    return Err(meta.error(format!(
                        "unknown argument of #[aside::cached]; expected one of: {KNOWN}"
                    )));
                }
            }
            Ok(())
        });
        parser.parse2(input.parse()?)?;
        Ok(attr)
    }
}

/// `"250ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"` in milliseconds.
fn parse_duration_ms(literal: &LitStr) -> syn::Result<u64> {
    let text = literal.value();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(per_unit)) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(syn::Error::new(
            literal.span(),
            "a TTL is a positive whole number and a unit: \"250ms\", \"30s\", \"10m\", \"1h\", \"7d\"",
        )),
    }
}

/// The `aside::Strategy` named by `literal`.
fn parse_strategy(literal: &LitStr) -> syn::Result<TokenStream2> {
    Ok(match literal.value().as_str() {
        "lease" => quote!(::aside::Strategy::Lease),
        "versioned" => quote!(::aside::Strategy::Versioned),
        "delete" => quote!(::aside::Strategy::Delete),
        "double-delete" => quote!(::aside::Strategy::DoubleDelete {
            delay: ::aside::DEFAULT_DOUBLE_DELETE_DELAY
        }),
        _ => {
            return Err(syn::Error::new(
                literal.span(),
                "unknown strategy; expected \"lease\", \"versioned\", \"delete\" or \"double-delete\"",
            ));
        }
    })
}

/// `T` and `E` of a return type written `Result<T, E>`.
fn result_types(output: &ReturnType) -> syn::Result<(Type, Type)> {
    let wrong = |span: Span| {
        syn::Error::new(
            span,
            "a #[aside::cached] function returns `Result<T, E>` (the loader's result, with its error type written out)",
        )
    };
    let ReturnType::Type(_, ty) = output else {
        return Err(wrong(output.span()));
    };
    let Type::Path(path) = ty.as_ref() else {
        return Err(wrong(ty.span()));
    };
    let Some(last) = path.path.segments.last() else {
        return Err(wrong(ty.span()));
    };
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Err(wrong(ty.span()));
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    match (last.ident == "Result", types.as_slice()) {
        (true, [value, error]) => Ok(((*value).clone(), (*error).clone())),
        _ => Err(wrong(ty.span())),
    }
}

/// `V` when `ty` is written `Option<V>`.
fn option_inner(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match (last.ident == "Option", args.args.first()) {
        (true, Some(GenericArgument::Type(inner))) if args.args.len() == 1 => Some(inner.clone()),
        _ => None,
    }
}

fn expand(attr: Attr, mut function: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            "#[aside::cached] needs an `async fn`: its body is the loader, which is awaited",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[aside::cached] does not take a generic function: the namespace (one per function) needs one value type",
        ));
    }
    let Some(namespace) = attr.namespace else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[aside::cached] needs `namespace = \"NAME\"`",
        ));
    };
    let Some(source) = attr.source else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[aside::cached] needs a source of the Aside: `aside = ARG` (an argument of type Aside or &Aside) or `global` (registered with aside::global::set)",
        ));
    };
    let (value_ty, error_ty) = result_types(&sig.output)?;

    // The arguments: plain names, cloned for each run of the body.
    let mut arguments: Vec<(Ident, bool)> = Vec::new();
    for input in function.sig.inputs.iter_mut() {
        match input {
            FnArg::Receiver(receiver) => {
                if receiver.reference.is_none() || receiver.mutability.is_some() {
                    return Err(syn::Error::new(
                        receiver.span(),
                        "#[aside::cached] takes `&self` only: the body may run more than once, so it cannot consume or mutate `self`",
                    ));
                }
            }
            FnArg::Typed(typed) => match typed.pat.as_mut() {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    // `mut` moves to the clone the body gets: the outer
                    // binding is never mutated.
                    arguments.push((pat.ident.clone(), pat.mutability.take().is_some()));
                }
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "#[aside::cached] needs plain argument names (`id: u64`), not patterns",
                    ));
                }
            },
        }
    }
    let named = |wanted: &Ident| arguments.iter().any(|(name, _)| name == wanted);
    let listing = || {
        let names: Vec<String> = arguments.iter().map(|(name, _)| format!("`{name}`")).collect();
        if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("its arguments are {}", names.join(", "))
        }
    };
    if let Source::Argument(arg) = &source
        && !named(arg)
    {
        return Err(syn::Error::new(
            arg.span(),
            format!("`aside = {arg}` names no argument of the function: {}", listing()),
        ));
    }
    let key = match attr.key {
        Some(key) => {
            if let Some(missing) = key.iter().find(|k| !named(k)) {
                return Err(syn::Error::new(
                    missing.span(),
                    format!(
                        "the key names `{missing}`, which is no argument of the function: {}",
                        listing()
                    ),
                ));
            }
            key
        }
        None => arguments
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| !matches!(&source, Source::Argument(arg) if arg == name))
            .collect(),
    };
    if key.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[aside::cached] has nothing to make the key of: name arguments with `key = ARG` or `key = (ARG, ARG)`",
        ));
    }

    let (cached_ty, returns_option) = match option_inner(&value_ty) {
        Some(inner) => (inner, true),
        None => (value_ty.clone(), false),
    };
    let fn_name = function.sig.ident.to_string();
    let namespace_name = namespace.value();
    let ttl = match attr.ttl_ms {
        Some(ms) => quote!(::core::option::Option::Some(::std::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let jitter = match attr.jitter {
        Some(jitter) => quote!(::core::option::Option::Some(#jitter)),
        None => quote!(::core::option::Option::None),
    };
    let strategy = match attr.strategy {
        Some(strategy) => quote!(::core::option::Option::Some(#strategy)),
        None => quote!(::core::option::Option::None),
    };
    let namespace_of = match &source {
        Source::Argument(arg) => quote_spanned!(arg.span()=> __ASIDE_NAMESPACE.on(&#arg, &__aside_spec)),
        Source::Global(span) => quote_spanned!(*span=> __ASIDE_NAMESPACE.on_global(&__aside_spec)),
    };
    // One argument: its `Display`. Several: each one's, escaped, joined
    // by `:` (`macro_support::joined_key`), so that no two argument lists
    // share a key.
    let key_expr = if key.len() == 1 {
        quote!(::std::format!("{}", #(#key),*))
    } else {
        quote!(::aside::macro_support::joined_key(&[#(&#key as &dyn ::core::fmt::Display),*]))
    };
    let clones = arguments.iter().map(|(name, mutable)| {
        let binding = if *mutable { quote!(mut #name) } else { quote!(#name) };
        // The `aside` argument is used by the macro, whatever the body does.
        let allow = match &source {
            Source::Argument(arg) if arg == name => quote!(#[allow(unused_variables)]),
            _ => quote!(),
        };
        quote_spanned!(name.span()=> #allow let #binding = ::core::clone::Clone::clone(&#name);)
    });
    let body = &function.block;
    let typed_body = quote!(::aside::macro_support::typed::<#value_ty, #error_ty, _>(async move #body));
    let load = if returns_option {
        typed_body
    } else {
        quote!(async move { #typed_body.await.map(::core::option::Option::Some) })
    };
    let read = format_ident!("__aside_read");
    let finish = if returns_option {
        quote!(#read)
    } else {
        quote!(::aside::macro_support::present(#read, &__aside_spec))
    };
    let new_block = quote!({
        static __ASIDE_NAMESPACE: ::aside::macro_support::NamespaceSlot<#cached_ty> =
            ::aside::macro_support::NamespaceSlot::new();
        let __aside_spec = ::aside::macro_support::Spec {
            name: #namespace_name,
            ttl: #ttl,
            jitter: #jitter,
            strategy: #strategy,
            function: ::core::concat!(::core::module_path!(), "::", #fn_name),
        };
        let __aside_namespace = #namespace_of?;
        let __aside_key = #key_expr;
        let #read = __aside_namespace
            .get_or_load(&__aside_key, move || {
                #(#clones)*
                #load
            })
            .await;
        #finish
    });
    function.sig.output = syn::parse_quote!(-> ::aside::Result<#value_ty>);
    function.block = syn::parse2(new_block)?;
    Ok(quote!(#function))
}
