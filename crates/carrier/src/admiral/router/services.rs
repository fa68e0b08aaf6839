//! Services created at runtime ([`Request::CreateService`](crate::ipc::proto::Request::CreateService)):
//! checked here, then handed to the lifecycle, which starts and supervises them like the
//! services declared at launch; the asker hears once the new service is ready or has failed.

use super::Router;
use super::calls::Waiter;
use crate::admiral::lifecycle::{Input, MAX_SERVICES, ServiceSpec, WorkerId};
use crate::ipc::proto::{Refusal, Reply};

impl Router {
    pub(super) fn create_service(&mut self, waiter: Waiter, spec: ServiceSpec) {
        if let Err(reason) = self.check_new_service(&spec) {
            return self.reply(waiter, Reply::Refused(Refusal::CreateFailed(reason)));
        }
        tracing::info!(target: "fleet::lifecycle", service = %spec.name, kind = %spec.kind, depends_on = ?spec.depends_on, "creating a service");
        let id = WorkerId::Service(spec.name.clone());
        self.control.creates.entry(id).or_default().push(waiter);
        self.lifecycle_input(Input::AddService(spec));
    }

    fn check_new_service(&self, spec: &ServiceSpec) -> Result<(), String> {
        ServiceSpec::check_name(&spec.name)?;
        if !self.config.service_kinds.contains(&spec.kind) {
            return Err(format!(
                "no service type is registered as {:?} (Fleet::service_kind)",
                spec.kind
            ));
        }
        let services = self
            .lifecycle
            .workers()
            .filter(|w| matches!(w.id, WorkerId::Service(_)))
            .count();
        let replaces = self.lifecycle.service(&spec.name).is_some();
        if services >= MAX_SERVICES && !replaces {
            return Err(format!("the fleet already has {MAX_SERVICES} services"));
        }
        if spec.depends_on.len() > MAX_SERVICES {
            return Err("too many dependencies".to_owned());
        }
        self.lifecycle.can_add_service(spec)
    }

    /// A service being created is ready (`Ok`) or will not be (`Err`): its creators hear.
    pub(super) fn finish_create(&mut self, worker: &WorkerId, result: Result<(), &str>) {
        for waiter in self.control.creates.remove(worker).unwrap_or_default() {
            let reply = match result {
                Ok(()) => Reply::Done,
                Err(reason) => Reply::Refused(Refusal::CreateFailed(reason.to_owned())),
            };
            self.reply(waiter, reply);
        }
    }
}

/// A creation request's spec, its timeout in range.
pub(super) fn spec(
    name: String,
    kind: String,
    depends_on: Vec<String>,
    start_timeout_ms: Option<u64>,
) -> ServiceSpec {
    ServiceSpec {
        name,
        kind,
        depends_on,
        start_timeout: start_timeout_ms.map(crate::ipc::proto::clamp_timeout),
        once_per_bot: false,
    }
}
