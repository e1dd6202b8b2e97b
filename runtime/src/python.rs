//! The `kodo` Python package (`sdk/python`), bundled in the binary. Kodosumi
//! flows run `python -m kodo.kodosumi` with it first on `PYTHONPATH`: their
//! users install nothing, and the package always matches the runtime.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

macro_rules! bundled {
    ($path:literal) => {
        ($path, include_str!(concat!("../../sdk/python/", $path)))
    };
}

/// Every file of the package: (path, text).
const FILES: &[(&str, &str)] = &[
    bundled!("kodo/__init__.py"),
    bundled!("kodo/kodosumi/__init__.py"),
    bundled!("kodo/kodosumi/__main__.py"),
    bundled!("kodo/kodosumi/app.py"),
    bundled!("kodo/kodosumi/errors.py"),
    bundled!("kodo/kodosumi/forms.py"),
    bundled!("kodo/kodosumi/host.py"),
    bundled!("kodo/kodosumi/response.py"),
    bundled!("kodo/kodosumi/standins/last/fastapi/__init__.py"),
    bundled!("kodo/kodosumi/standins/last/fastapi/responses.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/__init__.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/core.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/response.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/service/__init__.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/service/inputs/__init__.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/service/inputs/errors.py"),
    bundled!("kodo/kodosumi/standins/first/kodosumi/service/inputs/forms.py"),
    bundled!("kodo/kodosumi/standins/last/ray/__init__.py"),
    bundled!("kodo/kodosumi/standins/last/ray/serve/__init__.py"),
    bundled!("kodo/kodosumi/tracer.py"),
];

/// Where the package goes: `KODO_PYTHON_DIR`, else the user's cache folder
/// (`$XDG_CACHE_HOME/kodo`, `$HOME/.cache/kodo`); None: neither is known.
fn cache_root() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("KODO_PYTHON_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("kodo"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache/kodo"))
}

/// The folder to put on `PYTHONPATH`, written once per version of the
/// package (named by its content's hash; a folder there already is taken
/// as it is).
pub fn install() -> Result<PathBuf, String> {
    static INSTALLED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| match cache_root() {
            Some(root) => install_in(&root),
            // No shared folder to trust: one of this process's own
            // (created private, with a random name), kept while it runs.
            None => {
                let own = tempfile::Builder::new()
                    .prefix("kodo-python-")
                    .tempdir()
                    .map_err(|e| format!("cannot write the kodo Python package: {e}"))?;
                install_in(&own.keep())
            }
        })
        .clone()
}

fn install_in(root: &Path) -> Result<PathBuf, String> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    FILES.hash(&mut hasher);
    let dir = root.join(format!(
        "python-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        hasher.finish()
    ));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let failed = |e: std::io::Error| {
        format!(
            "cannot write the kodo Python package under {}: {e} (set KODO_PYTHON_DIR to a writable folder)",
            root.display()
        )
    };
    // Written aside (a folder of its own), then renamed: another process
    // never sees half of it.
    std::fs::create_dir_all(root).map_err(failed)?;
    let aside = tempfile::Builder::new()
        .prefix(".python-")
        .tempdir_in(root)
        .map_err(failed)?;
    let aside = aside.path();
    for (path, text) in FILES {
        let file = aside.join(path);
        std::fs::create_dir_all(file.parent().expect("a file in a folder")).map_err(failed)?;
        std::fs::write(&file, text).map_err(failed)?;
    }
    std::fs::write(aside.join(".complete"), "").map_err(failed)?;
    if dir.exists() && !dir.join(".complete").is_file() {
        // Half of it (a copy interrupted, or files cleaned away): replaced.
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = std::fs::rename(aside, &dir) {
        // Another process put it there first.
        if !dir.join(".complete").is_file() {
            return Err(failed(e));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_package_is_bundled() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
        let mut on_disk = Vec::new();
        let mut folders = vec![sdk.join("kodo")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "py") {
                    let relative = path.strip_prefix(&sdk).unwrap();
                    on_disk.push(relative.to_str().unwrap().to_string());
                }
            }
        }
        on_disk.sort();
        let mut bundled: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        bundled.sort();
        assert_eq!(
            bundled, on_disk,
            "runtime/src/python.rs lists every file of sdk/python/kodo"
        );
    }

    #[test]
    fn installs_once_and_is_importable() {
        let root = tempfile::tempdir().unwrap();
        let dir = install_in(root.path()).unwrap();
        assert_eq!(install_in(root.path()).unwrap(), dir);
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import kodo.kodosumi, ray.serve; print(kodo.__version__)",
            ])
            .env(
                "PYTHONPATH",
                format!(
                    "{}:{}",
                    dir.display(),
                    dir.join("kodo/kodosumi/standins/last").display()
                ),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
