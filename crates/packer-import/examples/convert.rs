//! `cargo run -p opsbake-packer-import --example convert -- FILE [OUT_DIR]`:
//! print the converted template and the report.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(f) = args.get(1) else {
        eprintln!("usage: convert FILE [OUT_DIR]");
        std::process::exit(2);
    };
    let out = args.get(2).cloned().unwrap_or_else(|| ".".into());
    match opsbake_packer_import::convert_file(std::path::Path::new(f), std::path::Path::new(&out)) {
        Ok(c) => {
            print!("{}", c.yaml);
            for n in &c.notes {
                eprintln!("{n}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
