//! Veil's companion server: the untrusted "ML factory". It serves the pages and the wasm client,
//! the public models and flows, the [`factory`] (datasets, training jobs and the untrusted
//! classifier) and the attack labs ([`leakage`], [`blackbox`], [`rtas`]). Only the untrusted party's code lives here: it
//! never receives or holds a data owner's key or plaintext image (the owner's side in a
//! terminal is the `veil-cli` crate).

pub mod blackbox;
pub mod embedded;
pub mod error;
pub mod events;
pub mod factory;
pub mod flowsets;
pub mod fsutil;
pub mod leakage;
pub mod routes;
pub mod rtas;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;

pub use error::AppError;

/// A model the server offers (weights are public: they are the *untrusted* side's models).
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The model card.
    pub card: veil::nn::model::ModelCard,
    /// Burnpack weights.
    pub weights: Arc<Vec<u8>>,
}

/// Shared server state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The folder of the pages (`www/`), served at `/`.
    pub www_dir: PathBuf,
    /// Built-in models by name.
    pub models: Arc<Vec<ServedModel>>,
    /// The ML factory (datasets, jobs, trained models).
    pub factory: Arc<factory::Factory>,
    /// The gradient-leakage lab.
    pub leakage: Arc<leakage::LeakageLab>,
    /// The RTAS lab (the four parties on loopback).
    pub rtas: Arc<rtas::lab::RtasLab>,
    /// The black-box lab (membership inference and extraction against the factory's models).
    pub blackbox: Arc<blackbox::BlackBoxLab>,
    /// The public flows of flow rotation the pages download (`/api/flows`).
    pub flows: Arc<flowsets::FlowFamilies>,
}

impl AppState {
    /// The state with the embedded default models and flows, serving pages from `www_dir`, with
    /// `factory`. Fails only if the embedded flows cannot be loaded.
    pub fn with_defaults(www_dir: PathBuf, factory: Arc<factory::Factory>) -> anyhow::Result<Self> {
        Ok(Self {
            www_dir,
            factory,
            leakage: Arc::new(leakage::LeakageLab::new()?),
            rtas: Arc::new(rtas::lab::RtasLab::new()?),
            blackbox: Arc::new(blackbox::BlackBoxLab::new()),
            flows: flowsets::FlowFamilies::embedded_shared()?,
            models: Arc::new(
                embedded::builtin_models()
                    .into_iter()
                    .map(|(card, weights)| ServedModel {
                        card,
                        weights: Arc::new(weights.to_vec()),
                    })
                    .collect(),
            ),
        })
    }

    /// Starts a graceful stop: training workers stop at their next step, running attacks are
    /// cancelled, and event streams end.
    pub fn begin_shutdown(&self) {
        self.factory.begin_shutdown();
        self.leakage.begin_shutdown();
        self.rtas.begin_shutdown();
        self.blackbox.begin_shutdown();
    }
}

/// The application: API routes, then static files.
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// The `www/` folder of this source tree (the default when `--www` is not given).
pub fn default_www_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../www")
}
