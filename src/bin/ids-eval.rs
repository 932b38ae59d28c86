//! `ids-eval [DIR] [--misses FAMILY] [--blocked-benign]`: the intrusion
//! detector's detection and false-positive rates on the IDS corpus
//! (default `tests/data/corpus`), as a Markdown table.

use std::path::PathBuf;
use std::process::ExitCode;

use frenly::apisec::ids::eval;

fn main() -> ExitCode {
    let mut dir = PathBuf::from("tests/data/corpus");
    let mut misses: Option<String> = None;
    let mut show_benign = false;
    let mut explain: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--misses" => match args.next() {
                Some(f) => misses = Some(f),
                None => {
                    eprintln!("ids-eval: --misses needs a family name");
                    return ExitCode::from(2);
                }
            },
            "--blocked-benign" => show_benign = true,
            "--explain" => match args.next() {
                Some(f) => explain.push(f),
                None => return ExitCode::from(2),
            },
            "-h" | "--help" => {
                println!("usage: ids-eval [DIR] [--misses FAMILY] [--blocked-benign]");
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("ids-eval: unknown option `{other}`");
                return ExitCode::from(2);
            }
            other => dir = PathBuf::from(other),
        }
    }
    let records = match eval::load(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ids-eval: cannot read the corpus in {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    };
    if !explain.is_empty() {
        let mut ids = frenly::apisec::ids::Ids::new(&Default::default(), "X-API-Key", &[]);
        for r in records
            .iter()
            .filter(|r| explain.iter().any(|e| r.id.contains(e.as_str())))
        {
            ids.set_prefilter(true);
            let a = eval::explain(&ids, r);
            ids.set_prefilter(false);
            let b = eval::explain(&ids, r);
            println!(
                "{}\n  {}\n  uri={} body={:.200}\n  prefilter on:  {a}\n  prefilter off: {b}",
                r.id, r.family, r.uri, r.body
            );
        }
        return ExitCode::SUCCESS;
    }
    let rep = eval::evaluate(&records);
    print!("{}", eval::table(&rep));
    if !rep.prefilter_mismatches.is_empty() {
        println!(
            "\nprefilter changed the verdict of: {:?}",
            rep.prefilter_mismatches
        );
    }
    if let Some(f) = misses {
        let row = match f.as_str() {
            "crs-benign" => Some(&rep.crs_benign),
            "agent-benign" => Some(&rep.agent_benign),
            _ => rep.attacks.get(&f),
        };
        match row {
            Some(row) => {
                println!("\nmissed ({}):", row.missed.len());
                for id in &row.missed {
                    println!("{id}");
                }
            }
            None => println!("\nno such family: {f}"),
        }
    }
    if show_benign {
        println!(
            "\nblocked CRS benign ({}):",
            rep.crs_benign.blocked_ids.len()
        );
        for id in &rep.crs_benign.blocked_ids {
            println!("{id}");
        }
        println!(
            "\nblocked agent benign ({}):",
            rep.agent_benign.blocked_ids.len()
        );
        for id in &rep.agent_benign.blocked_ids {
            println!("{id}");
        }
    }
    ExitCode::SUCCESS
}
