//! `orchard`: the binary. Everything it does lives in the library (`src/lib.rs`), so that the
//! fuzz targets can reach the same decoders the daemon runs.

fn main() -> std::process::ExitCode {
    orchard::main()
}
