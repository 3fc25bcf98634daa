// Package gate is the "cleanup gate": a pure decision a fixed KubeVirt virt-controller
// consults before it deletes an old hotplug attachment pod (an `hp-volume-*` pod).
//
// # Why
//
// In KubeVirt v1.9.0, cleanupAttachmentPods in
// pkg/virt-controller/watch/vmi/volume-hotplug.go deletes every old attachment pod (with
// grace period 0, through deleteAttachmentPod) as soon as the current attachment pod's
// phase is Running. It never looks at the status of volumes that are still in the VMI
// spec, nor at the node. virt-handler, however, never re-points a launcher's block node or
// bind mount at a newer attachment pod (mountBlockHotplugVolume and
// mountFileSystemHotplugVolume in pkg/virt-handler/hotplug-disk/mount.go). When the
// storage driver gave the new pod a different device, deleting the old pod tears down
// the device the VM still uses, and the guest gets I/O errors (kubevirt#6564,
// kubevirt#9708). The node agent (hotplug-watchdog) can see which pod really backs the
// launcher's device and reports it as a pod condition; this package turns that signal,
// plus KubeVirt's own status, into a yes/no.
//
// # Scope
//
// The gate only ever adds waiting; it never makes KubeVirt delete something it would
// keep. It applies only to an old pod that is Running, is not being deleted, and serves
// at least one volume that is still in the VMI spec. "Serves" means: the pod has a
// PVC-backed pod volume named after the VMI volume (that is how
// RenderHotplugAttachmentPodTemplate in pkg/virt-controller/services/template.go names
// them). "In the spec" means: named in vmi.spec.volumes or vmi.spec.utilityVolumes. Every
// other old pod is Allowed at once, and KubeVirt's own rules decide:
//   - a Pending pod never had its container Ready, so virt-handler never mounted from it
//     (the controller sets attachPodUID only for a Ready container,
//     processHotplugVolumeStatus in pkg/virt-controller/watch/vmi/storage.go); keeping
//     it would only feed the pending-pod churn of kubevirt#16937 (a Pending old pod also
//     stops a new attachment pod from being created, hasPendingPods). A Succeeded or
//     Failed pod no longer runs, and kubelet tears down a terminated pod's volumes
//     whether or not the object is deleted;
//   - a pod that serves only volumes removed from the spec is left to the fallback
//     (podContainsVolumesToPreserve, from PR #18045) and the removed-volume rule
//     (volumeReadyForPodDelete, from PR #14998). Gating it could rebuild the two-VMI RWO
//     deadlock that #18045 fixed.
//
// # Rules for a gated old pod (checked in this order; the first that fails is the Reason)
//
//  1. The current attachment pod exists, is not being deleted, and its phase is Running
//     (Reason CurrentPodNotRunning).
//  2. Every in-spec volume the old pod serves has a vmi.status.volumeStatus entry in
//     phase Ready (Reason VolumeNotReady). Memory-dump and utility volumes never become
//     disks in the domain, so virt-handler never moves them past MountedToPod
//     (updateHotplugVolumeStatus in pkg/virt-handler/vm.go); for them MountedToPod or
//     Ready is enough, otherwise the old pod would be pinned forever.
//  3. The current pod serves each of those volumes too, with the same claim name
//     (Reason VolumeNotServedByCurrentPod).
//  4. The node agent's signal: the condition of type hotplug-watchdog.io/HandoffSafe on
//     the OLD pod's status, read together with the agent's liveness Lease for the old
//     pod's node (Input.Lease, Input.LeaseError). See the decision table below.
//
// # Decision table of rule 4
//
// The rows do not overlap. A condition status other than True or False counts as
// Unknown. Decision.Lease says how the lease was judged (empty when rules 1-3, or the
// scope rules, decided).
//
//	condition on old pod  lease (JudgeLease)                decision
//	True                  any                               Allowed, HandoffSafe
//	False / Unknown       alive                             blocked, HandoffUnsafe / HandoffUnknown,
//	                                                        no deadline; RequeueAfter = until the
//	                                                        lease would expire (>= 1 s)
//	False / Unknown       missing, expired, invalid, or     blocked, HandoffUnsafe / HandoffUnknown,
//	                      unreadable and not known alive    until AgentDeadline after the later of
//	                                                        (current pod running, lease expiry);
//	                                                        then Allowed, AgentDeadlineExceeded
//	absent                alive, or unreadable              blocked, HandoffPending, until
//	                                                        ConditionWait after the current pod
//	                                                        running; then Allowed,
//	                                                        ConditionWaitExceeded
//	absent                missing, expired, invalid         Allowed, VolumesReadyNoAgent (KubeVirt's
//	                                                        rules: rules 1-3 decide)
//
// Volumes removed from the spec are ignored entirely: the gate adds no blocking for them.
// KubeVirt keeps a pod serving a removed volume whose status is Ready or MountedToPod, and
// that logic stays in KubeVirt.
//
// # Agent lease
//
// The agent holds one coordination.k8s.io/v1 Lease per node, LeaseName(node) =
// "hotplug-watchdog-<node>", in its namespace (DefaultLeaseNamespace unless configured):
// holderIdentity "<node>/<agent pod>", leaseDurationSeconds 40 by default (at most 60),
// renewTime renewed every 10 s by default (at most 20 s) while the agent is healthy,
// acquireTime set at creation. JudgeLease says:
//   - Alive: renewTime (acquireTime when renewTime is nil) + leaseDurationSeconds is after
//     Now. A duration above MaxLeaseDuration (60 s) counts as 60 s, so that a bad lease
//     cannot stretch a dead agent's hold.
//   - Expired: that time is not after Now. The expiry is when the agent was last known
//     alive; the deadline counts from it when it is later than the current pod's start.
//   - Missing: Input.Lease is nil (the controller's read said NotFound).
//   - Invalid: leaseDurationSeconds nil or not positive, neither renewTime nor
//     acquireTime, or the lease is named for another node. Never alive, and it offers no
//     expiry: the deadline counts from the current pod running, so that a writer that
//     keeps renewing an invalid lease cannot postpone the deadline forever.
//   - Unknown: Input.LeaseError is set (a read error other than NotFound: forbidden,
//     timeout, ...). The controller passes the last lease it did read (or nil) with the
//     error; that lease still counts until its expiry, because liveness is purely a
//     matter of time. Not known alive and False/Unknown: the deadline applies (from the
//     later of the current pod running and the last lease's expiry), so a missing RBAC
//     grant or an API outage cannot pin old pods forever, and a short API hiccup during
//     a long hold does not release the pod. With no condition, unknown waits like alive.
//
// Clock skew is not handled beyond this: renewTime is written with the agent's clock
// and compared with Input.Now, the controller's. A skew of S moves every expiry by S; a
// renewTime in the future keeps a dead agent's lease alive until renewTime + duration.
// Node and control-plane clocks are expected to be NTP-synchronised; the lease durations
// (tens of seconds) leave room for ordinary drift. Correcting it would need state (when
// the controller itself last saw renewTime change, as client-go's leader election does),
// which this pure function does not keep.
//
// # Agent deadline
//
// A dead or wedged agent leaves its last condition behind and produces no event. The
// lease tells the two cases apart. While the lease is alive, a False or Unknown condition
// holds the old pod for as long as it takes: the old pod is what keeps the VM's disk alive,
// and the agent is watching. Once the lease is missing, expired or invalid (or cannot be
// read and nothing alive is known), the condition may be a dead agent's last word: it
// holds the pod only until Input.AgentDeadline (DefaultAgentDeadline, 5 minutes, when
// zero) has passed since the later of the current pod running and the lease's expiry;
// then the gate allows deletion with Reason AgentDeadlineExceeded (the controller records
// a Warning event). Counting from the expiry gives a dead agent's verdict the same grace
// a fresh one gets. A negative AgentDeadline turns the deadline off: a False condition
// then keeps the old pod until the agent changes its mind (the operator has to act, for
// example by live-migrating the VM).
//
// "Running since" is the latest lastTransitionTime among the current pod's kubelet
// conditions (PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady,
// Ready) whose status is True; in practice that is when it last became Ready. The latest
// is chosen so that a container restart restarts the clock (the agent must get a fair
// look at the pod as it now is); other condition types, including the agent's own
// hotplug-watchdog.io/* conditions on the current pod, are ignored because they move for
// reasons unrelated to the pod running. Without such a condition the gate falls back to
// status.startTime, then metadata.creationTimestamp (a pod with none of them never starts
// the clock; only synthetic input lacks them all).
//
// # Condition wait
//
// A live agent that has not written HandoffSafe on the old pod yet (it has just started,
// or the old pod is brand new) gets Input.ConditionWait (DefaultConditionWait, 30 s, when
// zero; negative: none) from the current pod running, the moment the gate would first let
// KubeVirt delete. The agent writes its verdict within seconds of a pod change (on watch
// events, not on its rescan period), so 30 s is several times what a healthy agent needs,
// and shorter than one lease duration (40 s): a live agent that still wrote nothing does
// not judge this pod, and holding longer would only delay KubeVirt for nothing. After the
// wait KubeVirt's rules decide (Reason ConditionWaitExceeded; the controller records a
// Warning event, since a live agent that wrote nothing is worth a look).
//
// While blocked, Decision.RequeueAfter is when the answer can change on a clock alone: the
// lease's expiry, the end of the condition wait, the deadline (at least 1 s). A condition
// change re-queues the VMI anyway, through the pod informer; a lease change does not (the
// controller reads leases, it does not watch them), hence the lease-expiry requeue. Blocks
// of rules 1-3 return RecheckInterval.
//
// # Stale conditions
//
// A HandoffSafe condition whose lastTransitionTime predates the current pod's creation is
// NOT treated as stale. The agent writes the condition level-based and only on
// transitions (lastTransitionTime moves only when the status changes; there is no
// heartbeat on the condition, to keep API writes low: the lease is the heartbeat). The
// ordinary dangerous case is exactly such a condition: the old pod has been False ("sole
// backer of the launcher's device") since long before the current pod existed, and stays
// False after the new pod starts because the new pod got a different device. Treating
// that as missing would reopen the very race the gate exists to close. The age of the
// signal is therefore never judged by its timestamp; the agent's liveness is judged by
// its lease instead.
package gate
