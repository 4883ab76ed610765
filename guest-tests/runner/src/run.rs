// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One run: the plan from the arguments, the guest image, the supervised
//! boot, the report.

use log::{error, info};

use crate::cli::Args;
use crate::error::Result;
use crate::image;
use crate::plan::Plan;
use crate::qemu;
use crate::soak;
use crate::summary;
use crate::supervise;

/// Entry point: runs and returns the process exit code.
pub fn main_with(args: &Args) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            error!("{e}");
            2
        }
    }
}

fn run(args: &Args) -> Result<i32> {
    if let Some(duration) = args.soak {
        return soak::soak(args, duration);
    }
    let plan = Plan::new(args)?;
    if args.print_cmdline {
        if !args.no_device {
            println!("# daemon (start first; it listens on the socket)");
            println!("{}", qemu::shell_line(&plan.daemon_argv));
        }
        println!(
            "# QEMU ({}; the initramfs is built by amdvi-run)",
            plan.qemu_banner
        );
        println!("{}", qemu::shell_line(&plan.qemu_cmd));
        return Ok(0);
    }
    if !args.no_device {
        plan.check_daemon()?;
    }
    image::build(args, &plan)?;
    info!("{}", plan.headline(args));
    let seen = supervise::supervise(args, &plan)?;
    if !args.keep {
        let _ = std::fs::remove_file(&plan.socket);
        let _ = std::fs::remove_file(&plan.initrd);
    }
    summary::report(args, &plan, seen)
}
