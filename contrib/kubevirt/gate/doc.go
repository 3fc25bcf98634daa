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
//     the OLD pod's status.
//     - absent: no agent on that node. Rules 1-3 decide (Reason
//     VolumesReadyNoAgent); the gate never waits for an agent that is not there.
//     - True: Allowed (Reason HandoffSafe).
//     - False: blocked (Reason HandoffUnsafe); Unknown or any other value: blocked like a
//     missing signal from a live agent (Reason HandoffUnknown). Both are bounded by the
//     agent deadline below.
//
// Volumes removed from the spec are ignored entirely: the gate adds no blocking for them.
// KubeVirt keeps a pod serving a removed volume whose status is Ready or MountedToPod, and
// that logic stays in KubeVirt.
//
// # Agent deadline
//
// A dead or wedged agent leaves its last condition behind, and a dead agent produces no
// event. So when the condition is False or Unknown and the current pod has been running
// for at least Input.AgentDeadline (DefaultAgentDeadline, 5 minutes, when zero), the
// gate allows deletion with Reason AgentDeadlineExceeded. A negative AgentDeadline turns
// the deadline off: a False condition then keeps the old pod until the agent changes its
// mind (the operator has to act, for example by live-migrating the VM).
//
// "Running since" is the latest lastTransitionTime among the current pod's kubelet
// conditions (PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady,
// Ready) whose status is True; in practice that is when it last became Ready. The latest
// is chosen so that a container restart restarts the clock (the agent must get a fair
// look at the pod as it now is); other condition types, including the agent's own
// hotplug-watchdog.io/* conditions on the current pod, are ignored because they move for
// reasons unrelated to the pod running. Without such a condition the gate falls back to
// status.startTime, then metadata.creationTimestamp.
//
// While blocked on the agent, Decision.RequeueAfter is the time left until the deadline,
// so the controller looks again exactly when the deadline can fire (a condition change
// re-queues the VMI anyway, through the pod informer). Other blocks return RecheckInterval.
//
// # Stale conditions
//
// A HandoffSafe condition whose lastTransitionTime predates the current pod's creation is
// NOT treated as stale. The agent writes the condition level-based and only on
// transitions (lastTransitionTime moves only when the status changes; there is no
// heartbeat, to keep API writes low). The ordinary dangerous case is exactly such a
// condition: the old pod has been False ("sole backer of the launcher's device") since
// long before the current pod existed, and stays False after the new pod starts because
// the new pod got a different device. Treating that as missing would reopen the very race
// the gate exists to close. The age of the signal is therefore never judged by its
// timestamp; liveness is bounded by the agent deadline instead.
package gate
