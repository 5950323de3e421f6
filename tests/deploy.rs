//! The deployment examples, checked as a contract: no API server or systemd
//! runs here, so the Kubernetes manifests are parsed (every document, every
//! file a kustomization names) and cross-checked (selectors, probes, the
//! Secret the config reads the database URL from), and the replicas' configs
//! must be valid but for the secret files that exist only where deployed.
//! `.ci/run` checks the systemd unit and its drop-in with `systemd-analyze verify`.

use kcr_housekeeper::config;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every document of a YAML file; a file that does not parse fails the test.
fn docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The documents of a kustomization's resources, each (file, document).
fn kustomized(dir: &Path) -> Vec<(String, Yaml)> {
    let k = &docs(&dir.join("kustomization.yaml"))[0];
    assert_eq!(k["kind"].as_str(), Some("Kustomization"), "{dir:?}");
    let mut out = Vec::new();
    for r in k["resources"].as_vec().expect("resources") {
        let file = r.as_str().unwrap();
        for d in docs(&dir.join(file)) {
            assert!(
                d["apiVersion"].as_str().is_some() && d["kind"].as_str().is_some(),
                "{file}: a document without apiVersion or kind"
            );
            out.push((file.to_string(), d));
        }
    }
    for g in k["configMapGenerator"].as_vec().into_iter().flatten() {
        for f in g["files"].as_vec().unwrap() {
            assert!(dir.join(f.as_str().unwrap()).is_file(), "{f:?}");
        }
    }
    out
}

fn of_kind<'a>(all: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    all.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn labels(y: &Yaml) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = y
        .as_hash()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    v.sort();
    v
}

/// A config valid but for its secret files (`secrets` of them).
fn valid_but_for_secret_files(path: &Path, secrets: usize) {
    let env = |_: &str| None;
    let err = config::load(path, &env).unwrap_err();
    assert!(
        err.0
            .iter()
            .all(|e| e.message.starts_with("cannot read secret file")),
        "{path:?}: {err}"
    );
    assert_eq!(err.0.len(), secrets, "{path:?}: {err}");
}

#[test]
fn every_kubernetes_manifest_parses() {
    let dir = root().join("deploy/kubernetes");
    let mut n = 0;
    for sub in [dir.clone(), dir.join("ha")] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                assert!(!docs(&p).is_empty(), "{p:?}");
                n += 1;
            }
        }
        kustomized(&sub);
    }
    assert!(n >= 15, "{n} manifests");
}

#[test]
fn the_replicated_deployment_is_two_or_three_fenced_replicas_with_a_pdb_probes_and_scraping() {
    let dir = root().join("deploy/kubernetes/ha");
    let all = kustomized(&dir);
    let deployment = of_kind(&all, "Deployment");
    assert_eq!(deployment.len(), 1);
    let d = deployment[0];
    let replicas = d["spec"]["replicas"].as_i64().unwrap();
    assert!((2..=3).contains(&replicas), "{replicas}");
    let selector = labels(&d["spec"]["selector"]["matchLabels"]);
    let pod = &d["spec"]["template"];
    let pod_labels = labels(&pod["metadata"]["labels"]);
    assert!(selector.iter().all(|l| pod_labels.contains(l)));
    // No volume claim: the state is the shared database.
    assert!(
        of_kind(&all, "PersistentVolumeClaim").is_empty(),
        "replicas share PostgreSQL, not a volume"
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // Graceful stop: the shutdown timeout (30 s) fits the grace period.
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap()
            > 30
    );

    // The PodDisruptionBudget covers exactly these pods and keeps one up.
    let pdb = of_kind(&all, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert_eq!(labels(&pdb[0]["spec"]["selector"]["matchLabels"]), selector);
    let max_unavailable = pdb[0]["spec"]["maxUnavailable"].as_i64();
    let min_available = pdb[0]["spec"]["minAvailable"].as_i64();
    assert!(
        max_unavailable.is_some_and(|m| m >= 1 && m < replicas)
            || min_available.is_some_and(|m| m >= 1 && m < replicas),
        "the PDB lets one go and keeps one: {max_unavailable:?} {min_available:?}"
    );

    // Every replica is scraped: the ServiceMonitor selects the Service, the Service the pods.
    let service = of_kind(&all, "Service");
    assert_eq!(labels(&service[0]["spec"]["selector"]), selector);
    let sm = of_kind(&all, "ServiceMonitor");
    assert_eq!(
        labels(&sm[0]["spec"]["selector"]["matchLabels"]),
        labels(&service[0]["metadata"]["labels"])
    );
    assert_eq!(
        sm[0]["spec"]["endpoints"][0]["path"].as_str(),
        Some("/metrics")
    );

    // The database URL is a file from a Secret that has it, at the path the config reads.
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let cfg: toml::Table = cfg.parse().unwrap();
    let url_file = cfg["state"]["url"]["file"].as_str().unwrap();
    let (mount_dir, key) = url_file.rsplit_once('/').unwrap();
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(mount_dir))
        .unwrap_or_else(|| panic!("nothing mounted at {mount_dir}"));
    let volume = pod["spec"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret_name = volume["secret"]["secretName"].as_str().unwrap();
    let secret = of_kind(&all, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(secret_name))
        .unwrap_or_else(|| panic!("no Secret {secret_name}"));
    assert!(
        secret["stringData"][key]
            .as_str()
            .is_some_and(|u| u.starts_with("postgresql://")),
        "{secret_name} holds {key}"
    );
    // Never in the environment (an exec sink's child could not see it anyway, but logs of `env` could).
    assert!(c["env"].is_badvalue() && c["envFrom"].is_badvalue());
}

#[test]
fn the_replicas_configs_are_valid_but_for_their_secret_files() {
    // The API keys and the database URL: files that exist only on a deployed host.
    valid_but_for_secret_files(&root().join("deploy/kubernetes/ha/config.toml"), 3);
    valid_but_for_secret_files(&root().join("deploy/systemd/ha/config.toml"), 3);
    // The systemd drop-in hands the database URL over as the credential the config reads.
    let dropin =
        std::fs::read_to_string(root().join("deploy/systemd/ha/kcr-housekeeper.service.d/ha.conf"))
            .unwrap();
    let cfg: toml::Table = std::fs::read_to_string(root().join("deploy/systemd/ha/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let url_file = cfg["state"]["url"]["file"].as_str().unwrap();
    let name = url_file
        .strip_prefix("/run/credentials/kcr-housekeeper.service/")
        .unwrap();
    assert!(
        dropin
            .lines()
            .any(|l| l.starts_with(&format!("LoadCredential={name}:"))),
        "{dropin}"
    );
}
