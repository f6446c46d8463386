//! Public flows for the browser: the flow-rotation flows the pages download so that the owner's
//! client can encrypt locally (`GET /api/flows`, `GET /api/flows/{family}/{file}`).
//!
//! A flow is public in the paper's threat model (Theorem 1 assumes the adversary knows `f`); the
//! secret is the rotation, which the client derives from its key and never sends. The server
//! ships the digits family compiled in ([`crate::embedded`]) and serves any family trained with
//! `veil flow train --out DIR` when started with `--flows NAME=DIR`.

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use veil::burn::tensor::Device;
use veil::data::ImageShape;
use veil::schemes::flow_rotation::{FlowManifest, FlowSet};

use crate::{AppError, AppState};

/// One family of flows (one kind of data): its manifest and files.
#[derive(Debug)]
pub struct FlowFamily {
    /// The family's name in URLs (`digits`, or the `--flows` name).
    pub name: String,
    manifest_text: Bytes,
    manifest: FlowManifest,
    files: BTreeMap<String, Bytes>,
}

/// What `GET /api/flows` says about a family.
#[derive(Debug, Serialize)]
struct FamilySummary {
    name: String,
    /// The data the flows were trained on.
    data: String,
    /// The images they read.
    shape: ImageShape,
    classes: Vec<String>,
    /// Quantisation bins of the data (17 for the UCI digits, 256 for 8-bit images).
    bins: usize,
    /// Glow levels × steps, hidden width.
    glow: String,
    /// `agnostic` or `class-<k>`, with held-out bits/dim and the file's URL and size.
    flows: Vec<FlowSummary>,
    manifest_url: String,
    /// All files together.
    bytes: usize,
}

#[derive(Debug, Serialize)]
struct FlowSummary {
    name: String,
    url: String,
    bytes: usize,
    held_out_bits_per_dim: Option<f64>,
}

impl FlowFamily {
    /// A family from a manifest's text and its files; every flow is loaded once (on the CPU) to
    /// check that the weights are complete and finite before anything is served.
    pub fn new(
        name: &str,
        manifest_text: String,
        mut files: BTreeMap<String, Bytes>,
    ) -> Result<Self> {
        if name.is_empty()
            || name.len() > 40
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("a flow family's name must be 1-40 characters of a-z, 0-9 and '-', not {name:?}");
        }
        let set = FlowSet::load(
            &manifest_text,
            |f| files.get(f).map(|b| b.as_ref()),
            &Device::flex(),
        )
        .with_context(|| format!("flow family {name}"))?;
        let files = set
            .manifest
            .flows
            .iter()
            .filter_map(|e| files.remove(&e.file).map(|b| (e.file.clone(), b)))
            .collect();
        Ok(Self {
            name: name.to_owned(),
            manifest_text: Bytes::from(manifest_text),
            manifest: set.manifest,
            files,
        })
    }

    /// The digits flows compiled into the server.
    pub fn embedded_digits() -> Result<Self> {
        let files = crate::embedded::DIGITS_FLOW_FILES
            .iter()
            .map(|(n, b)| ((*n).to_owned(), Bytes::from_static(b)))
            .collect();
        Self::new(
            "digits",
            crate::embedded::DIGITS_FLOWS_MANIFEST.to_owned(),
            files,
        )
    }

    /// A family written by `veil flow train --out DIR`.
    pub fn from_dir(name: &str, dir: &Path) -> Result<Self> {
        let manifest_path = dir.join("flows.json");
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        let manifest: FlowManifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a flow manifest", manifest_path.display()))?;
        let mut files = BTreeMap::new();
        for entry in &manifest.flows {
            if entry.file.contains('/') || entry.file.contains('\\') || entry.file.starts_with('.')
            {
                bail!(
                    "{} names an unsafe file {:?}",
                    manifest_path.display(),
                    entry.file
                );
            }
            let path = dir.join(&entry.file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.insert(entry.file.clone(), Bytes::from(bytes));
        }
        Self::new(name, text, files)
    }

    fn summary(&self) -> FamilySummary {
        let g = &self.manifest.glow;
        let flows = self
            .manifest
            .flows
            .iter()
            .map(|e| FlowSummary {
                name: e.name.clone(),
                url: format!("/api/flows/{}/{}", self.name, e.file),
                bytes: self.files.get(&e.file).map_or(0, |b| b.len()),
                held_out_bits_per_dim: e.held_out_bits_per_dim,
            })
            .collect::<Vec<_>>();
        FamilySummary {
            name: self.name.clone(),
            data: self.manifest.data.clone(),
            shape: ImageShape::new(g.channels, g.height, g.width),
            classes: self.manifest.classes.clone(),
            bins: self.manifest.preprocess.bins,
            glow: format!(
                "{} levels × {} steps, {} hidden",
                g.levels, g.steps, g.hidden
            ),
            bytes: flows.iter().map(|f| f.bytes).sum::<usize>() + self.manifest_text.len(),
            flows,
            manifest_url: format!("/api/flows/{}/flows.json", self.name),
        }
    }
}

/// Every served family, by name.
#[derive(Debug, Default)]
pub struct FlowFamilies(Vec<FlowFamily>);

impl FlowFamilies {
    /// The embedded digits family only.
    pub fn embedded() -> Result<Self> {
        Ok(Self(vec![FlowFamily::embedded_digits()?]))
    }

    /// [`FlowFamilies::embedded`], checked once per process and shared.
    pub fn embedded_shared() -> Result<std::sync::Arc<Self>> {
        static EMBEDDED: std::sync::OnceLock<Result<std::sync::Arc<FlowFamilies>, String>> =
            std::sync::OnceLock::new();
        EMBEDDED
            .get_or_init(|| {
                Self::embedded()
                    .map(std::sync::Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// Adds (or replaces) a family.
    pub fn insert(&mut self, family: FlowFamily) {
        self.0.retain(|f| f.name != family.name);
        self.0.push(family);
    }

    fn get(&self, name: &str) -> Option<&FlowFamily> {
        self.0.iter().find(|f| f.name == name)
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/flows", get(list))
        .route("/api/flows/{family}/{file}", get(file))
}

async fn list(State(state): State<AppState>) -> Json<Vec<FamilySummary>> {
    Json(state.flows.0.iter().map(FlowFamily::summary).collect())
}

async fn file(
    State(state): State<AppState>,
    UrlPath((family, file)): UrlPath<(String, String)>,
) -> Result<Response, AppError> {
    let fam = state
        .flows
        .get(&family)
        .ok_or_else(|| AppError::NotFound(format!("flow family {family}")))?;
    // Flows never change while the server runs; the page may cache them for a day.
    let cache = (
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    if file == "flows.json" {
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                cache,
            ],
            fam.manifest_text.clone(),
        )
            .into_response());
    }
    let bytes = fam
        .files
        .get(&file)
        .ok_or_else(|| AppError::NotFound(format!("flow file {file} of family {family}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            cache,
        ],
        bytes.clone(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_refuse_bad_names_and_broken_weights() {
        let err = FlowFamily::new("Bad Name", String::new(), BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("a-z"), "{err}");
        let mut files: BTreeMap<String, Bytes> = crate::embedded::DIGITS_FLOW_FILES
            .iter()
            .map(|(n, b)| ((*n).to_owned(), Bytes::from_static(b)))
            .collect();
        files.insert(
            "flow-class-3.bpk".into(),
            Bytes::from_static(b"not a burnpack"),
        );
        let err = FlowFamily::new(
            "digits",
            crate::embedded::DIGITS_FLOWS_MANIFEST.into(),
            files,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("class-3"), "{err:#}");
    }
}
