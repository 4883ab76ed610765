// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `amdvi-run`: boots the guest suite against vhost-device-amdvi. See `--help`.

use std::io::Write;

use clap::Parser;

use amdvi_runner::cli::Args;

fn main() {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "amdvi-run: {}", record.args()),
            level => writeln!(
                buf,
                "amdvi-run: {}: {}",
                level.as_str().to_lowercase(),
                record.args()
            ),
        })
        .init();
    std::process::exit(amdvi_runner::run::main_with(&args));
}
