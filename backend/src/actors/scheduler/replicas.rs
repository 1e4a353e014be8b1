//! Wake-ups from other replicas on the same database ([`crate::actors::replica_bus`]): a
//! job queued there that a builder connected here may take, a cancel or an operator's
//! command for a builder connected here. The database holds the change; these only say to
//! look now rather than at the next sweep.

use super::*;
use crate::store::notify::{BuilderChange, Notice};

/// A notice another replica sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromReplica(pub Notice);

/// The bus (re)connected: whatever was announced while it was down is in the database, so
/// sweep now rather than at the next tick.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplicaBusUp;

impl Handler<ReplicaBusUp> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: ReplicaBusUp, ctx: &mut Self::Context) {
        self.sweep(ctx);
    }
}

impl Handler<FromReplica> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: FromReplica, ctx: &mut Self::Context) {
        match msg.0 {
            Notice::JobQueued { project, recipe } => {
                // One claim, by the builder here with the most free slots that may take it
                // (as for a job submitted here): a claim per idle builder would have them all
                // query for one job. The claim checks labels and fair share; another
                // replica's builder may win it (SKIP LOCKED), and the sweep is the net.
                let best = self
                    .builders
                    .iter()
                    .filter(|(_, slot)| {
                        slot.free_slots() > 0
                            && slot.recipes.contains(&recipe)
                            && slot.serves(project)
                    })
                    .max_by_key(|(id, slot)| (slot.free_slots(), std::cmp::Reverse(id.0)))
                    .map(|(id, _)| *id);
                if let Some(builder) = best {
                    self.dispatch_to(builder, ctx);
                }
            }
            Notice::Cancel {
                job,
                attempt,
                builder,
            } => self.send_cancel(builder, job, attempt, CancelReason::Requested),
            Notice::Builder { builder, change } if self.builders.contains_key(&builder) => {
                self.builder_changed_elsewhere(builder, change, ctx)
            }
            Notice::Builder { .. } => {}
            // The log sink's, not ours: the bus routes it there.
            Notice::LogAppended { .. } => {}
        }
    }
}

impl Scheduler {
    /// Tells the other replicas that jobs became queued: one notice per project and recipe.
    pub(super) fn announce_queued<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) {
        if !self.bus.enabled() {
            return;
        }
        let mut seen = HashSet::new();
        for job in jobs {
            if job.state == JobState::Queued && seen.insert((job.project, job.recipe.as_str())) {
                self.bus.announce(Notice::JobQueued {
                    project: job.project,
                    recipe: job.recipe.clone(),
                });
            }
        }
    }

    /// An operator acted on a builder connected here through another replica: read what it
    /// stored and apply it.
    fn builder_changed_elsewhere(
        &mut self,
        builder: BuilderId,
        change: BuilderChange,
        ctx: &mut Context<Self>,
    ) {
        match change {
            BuilderChange::Revoke => {
                if let Some(slot) = self.builders.get(&builder) {
                    slot.session.close(
                        ErrorCode::BuilderRevoked,
                        "this builder was disabled or removed by an operator",
                    );
                }
            }
            BuilderChange::Control => {
                let store = self.store.clone();
                ctx.spawn(
                    blocking(move || store.builder_by_id(builder))
                        .into_actor(self)
                        .map(move |result, this, ctx| match result {
                            Ok(Some(row)) => this.apply_standing(builder, row.control, ctx),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(%builder, error = %e, "reading a builder's standing failed; it applies at the next session")
                            }
                        }),
                );
            }
            BuilderChange::Projects => {
                let store = self.store.clone();
                ctx.spawn(
                    blocking(move || store.builder_projects(builder))
                        .into_actor(self)
                        .map(move |result, this, ctx| match result {
                            Ok(projects) => {
                                let projects = (!projects.is_empty()).then_some(projects);
                                this.project_grants.insert(builder, projects.clone());
                                if let Some(slot) = this.builders.get_mut(&builder) {
                                    slot.projects = Some(projects);
                                    this.dispatch_to(builder, ctx);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(%builder, error = %e, "reading a builder's projects failed")
                            }
                        }),
                );
            }
        }
    }

    /// Puts a connected builder in the standing the operator stored, telling it if that
    /// changes anything.
    fn apply_standing(
        &mut self,
        builder: BuilderId,
        standing: BuilderControl,
        ctx: &mut Context<Self>,
    ) {
        self.controls.insert(builder, standing);
        let Some(slot) = self.builders.get_mut(&builder) else {
            return;
        };
        if slot.paused == standing.paused && slot.draining == standing.draining {
            return;
        }
        slot.paused = standing.paused;
        slot.draining = standing.draining;
        slot.control_synced = true;
        slot.session.push(ServerMessage::Control(Control {
            command: standing.command(),
        }));
        self.dispatch_to(builder, ctx);
    }
}
