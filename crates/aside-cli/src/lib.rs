//! The library half of the `aside` command-line tool: the parsers of
//! untrusted input that the fuzz targets under `fuzz/` and the corpus
//! replay test (`tests/fuzz_corpus.rs`) call directly. The binary
//! (`src/main.rs`) uses them from here; everything else of the tool lives
//! in the binary. Not a stable API.
#![forbid(unsafe_code)]

pub mod input;
