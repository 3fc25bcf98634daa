package gate

import (
	"fmt"
	"sort"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	v1 "kubevirt.io/api/core/v1"
)

// HandoffSafeCondition is the pod condition the hotplug-watchdog node agent writes on
// attachment pods (through pods/status). True: deleting this pod now orphans no launcher
// device.
const HandoffSafeCondition corev1.PodConditionType = "hotplug-watchdog.io/HandoffSafe"

// DefaultAgentDeadline is used when Input.AgentDeadline is zero.
const DefaultAgentDeadline = 5 * time.Minute

// DefaultConditionWait is used when Input.ConditionWait is zero.
const DefaultConditionWait = 30 * time.Second

// RecheckInterval is Decision.RequeueAfter for blocks that wait on no clock of their own
// (rules 1-3). Those blocks clear through pod or VMI updates, which re-queue the VMI
// anyway; this is only a safety net.
const RecheckInterval = 10 * time.Second

// minRequeue keeps a timed requeue from rounding down to "now" and spinning.
const minRequeue = time.Second

// Reasons. Allowed decisions:
const (
	ReasonOldPodTerminating     = "OldPodTerminating"
	ReasonOldPodNotRunning      = "OldPodNotRunning"
	ReasonNoVolumesInSpec       = "NoVolumesInSpec"
	ReasonHandoffSafe           = "HandoffSafe"
	ReasonVolumesReadyNoAgent   = "VolumesReadyNoAgent"
	ReasonAgentDeadlineExceeded = "AgentDeadlineExceeded"
	ReasonConditionWaitExceeded = "ConditionWaitExceeded"
)

// Reasons. Blocked decisions:
const (
	ReasonInvalidInput                = "InvalidInput"
	ReasonCurrentPodNotRunning        = "CurrentPodNotRunning"
	ReasonVolumeNotReady              = "VolumeNotReady"
	ReasonVolumeNotServedByCurrentPod = "VolumeNotServedByCurrentPod"
	ReasonHandoffUnsafe               = "HandoffUnsafe"
	ReasonHandoffUnknown              = "HandoffUnknown"
	ReasonHandoffPending              = "HandoffPending"
)

// Input is everything the gate looks at. It reads, never modifies, the objects.
type Input struct {
	// VMI owns the attachment pods (through its virt-launcher pod).
	VMI *v1.VirtualMachineInstance
	// CurrentPod is the attachment pod KubeVirt keeps (the one whose volumes match the
	// ready hotplug volumes); nil when there is none.
	CurrentPod *corev1.Pod
	// OldPod is the attachment pod about to be deleted.
	OldPod *corev1.Pod
	// Lease is the node agent's Lease for the old pod's node (LeaseName of
	// OldPod.Spec.NodeName, in the agent's namespace); nil when the read said NotFound.
	Lease *coordinationv1.Lease
	// LeaseError is set when the lease could not be read for another reason than NotFound
	// (forbidden, timeout, ...). Lease is then the last lease the controller did read for
	// that node, or nil: its expiry still counts, nothing after it is known.
	LeaseError error
	// Now is the controller's clock.
	Now time.Time
	// AgentDeadline bounds how long a False or Unknown HandoffSafe condition may keep the
	// old pod when no live agent stands behind it (lease missing, expired, invalid or
	// unreadable), measured from the later of: the current pod running, the lease's
	// expiry. Zero means DefaultAgentDeadline; negative means no deadline.
	AgentDeadline time.Duration
	// ConditionWait is how long a live agent (or one whose lease could not be read) may
	// take to write its first HandoffSafe condition on the old pod, measured from when the
	// current pod started running; after it, KubeVirt's rules decide. Zero means
	// DefaultConditionWait; negative means no wait.
	ConditionWait time.Duration
}

// Decision is the gate's answer.
type Decision struct {
	Allowed bool
	// Reason is a short CamelCase word (one of the Reason* constants).
	Reason string
	// Message says which volume or signal decided, for events and logs.
	Message string
	// RequeueAfter is when to look again if not Allowed; zero when Allowed, and for
	// InvalidInput.
	RequeueAfter time.Duration
	// Lease is how the agent's lease was judged; empty when rules before rule 4 decided
	// (the lease was not looked at).
	Lease LeaseState
}

func allow(reason, format string, args ...any) Decision {
	return Decision{Allowed: true, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

func block(reason string, after time.Duration, format string, args ...any) Decision {
	return Decision{Reason: reason, Message: fmt.Sprintf(format, args...), RequeueAfter: after}
}

// volumeKind says which volumeStatus phases count as "attached" for a spec volume.
type volumeKind int

const (
	// diskVolume: a PVC or DataVolume disk; it reaches Ready once it is in the domain.
	diskVolume volumeKind = iota
	// mountedVolume: a memory-dump or utility volume; it is a directory, never a domain
	// disk, so MountedToPod is as far as it goes.
	mountedVolume
)

// MayDeleteOldAttachmentPod decides whether in.OldPod may be deleted now. See the
// package documentation for the rules.
func MayDeleteOldAttachmentPod(in Input) Decision {
	if in.VMI == nil || in.OldPod == nil {
		return Decision{Reason: ReasonInvalidInput, Message: "the VMI and the old attachment pod are required"}
	}
	old := in.OldPod
	if old.DeletionTimestamp != nil {
		return allow(ReasonOldPodTerminating, "attachment pod %s is already being deleted", old.Name)
	}
	if old.Status.Phase != corev1.PodRunning {
		return allow(ReasonOldPodNotRunning,
			"attachment pod %s is %s, so it backs no launcher device; KubeVirt's rules decide", old.Name, phaseOf(old))
	}

	kinds := specVolumeKinds(in.VMI)
	oldClaims := podClaims(old)
	var gated []string // in-spec volumes the old pod serves, sorted
	for name := range oldClaims {
		if _, ok := kinds[name]; ok {
			gated = append(gated, name)
		}
	}
	if len(gated) == 0 {
		return allow(ReasonNoVolumesInSpec,
			"attachment pod %s serves no volume that is still in the spec; KubeVirt's removed-volume rules decide", old.Name)
	}
	sort.Strings(gated)

	// Rule 1: the current pod runs.
	cur := in.CurrentPod
	switch {
	case cur == nil:
		return block(ReasonCurrentPodNotRunning, RecheckInterval,
			"no current attachment pod; %s still serves %s", old.Name, list(gated))
	case cur.DeletionTimestamp != nil:
		return block(ReasonCurrentPodNotRunning, RecheckInterval,
			"current attachment pod %s is being deleted; %s still serves %s", cur.Name, old.Name, list(gated))
	case cur.Status.Phase != corev1.PodRunning:
		return block(ReasonCurrentPodNotRunning, RecheckInterval,
			"current attachment pod %s is %s; %s still serves %s", cur.Name, phaseOf(cur), old.Name, list(gated))
	}

	// Rule 2: every gated volume is attached (Ready; MountedToPod for directories).
	phases := make(map[string]v1.VolumePhase, len(in.VMI.Status.VolumeStatus))
	for _, vs := range in.VMI.Status.VolumeStatus {
		phases[vs.Name] = vs.Phase
	}
	var notReady []string
	for _, name := range gated {
		phase, ok := phases[name]
		if !ok {
			notReady = append(notReady, name+" (no status)")
		} else if !attached(kinds[name], phase) {
			notReady = append(notReady, fmt.Sprintf("%s (%s)", name, phaseOrNone(phase)))
		}
	}
	if len(notReady) > 0 {
		return block(ReasonVolumeNotReady, RecheckInterval,
			"%s serves volumes that are not Ready yet: %s", old.Name, strings.Join(notReady, ", "))
	}

	// Rule 3: the current pod serves them too, with the same claim.
	curClaims := podClaims(cur)
	var notServed []string
	for _, name := range gated {
		claim, ok := curClaims[name]
		if !ok {
			notServed = append(notServed, name)
		} else if claim != oldClaims[name] {
			notServed = append(notServed, fmt.Sprintf("%s (claim %s, old pod has %s)", name, claim, oldClaims[name]))
		}
	}
	if len(notServed) > 0 {
		return block(ReasonVolumeNotServedByCurrentPod, RecheckInterval,
			"only %s serves %s; current attachment pod %s does not", old.Name, strings.Join(notServed, ", "), cur.Name)
	}

	// Rule 4: the node agent's signal on the old pod, read together with its lease.
	return agentDecision(in, cur, gated)
}

// agentDecision is rule 4. Rules 1-3 hold: the current pod runs and serves, with the same
// claims, every in-spec volume the old pod serves, and those volumes are attached.
func agentDecision(in Input, cur *corev1.Pod, gated []string) Decision {
	old := in.OldPod
	lease := JudgeLease(in.Lease, in.LeaseError, old.Spec.NodeName, in.Now)
	cond := findCondition(old, HandoffSafeCondition)
	d := agentRule(in, cur, gated, lease, cond)
	d.Lease = lease.State
	return d
}

func agentRule(in Input, cur *corev1.Pod, gated []string, lease AgentLease, cond *corev1.PodCondition) Decision {
	old := in.OldPod
	since := RunningSince(cur)

	if cond != nil && cond.Status == corev1.ConditionTrue {
		return allow(ReasonHandoffSafe, "node agent: %s", condText(cond))
	}

	if cond == nil {
		// No verdict on the old pod. Without a live agent that is the plain KubeVirt case:
		// rules 1-3 decide. With one (or when the lease could not be read: the agent may
		// be alive), give it a short while to judge the handoff first; a live agent
		// writes its verdict within seconds of the current pod starting, so a missing one
		// after the wait means it does not judge this pod, and KubeVirt's rules decide.
		if lease.State != LeaseUnknown && !lease.Alive {
			return allow(ReasonVolumesReadyNoAgent,
				"%s is Running and serves %s, all Ready; no %s condition on %s and no live agent (%s)",
				cur.Name, list(gated), HandoffSafeCondition, old.Name, lease.Detail)
		}
		wait := in.ConditionWait
		if wait == 0 {
			wait = DefaultConditionWait
		}
		if wait > 0 && !since.IsZero() {
			if end := since.Add(wait); in.Now.Before(end) {
				after := end.Sub(in.Now)
				if lease.Alive {
					// If the lease runs out first, the answer changes (no live agent).
					after = min(after, lease.Expiry.Sub(in.Now))
				}
				return block(ReasonHandoffPending, max(after, minRequeue),
					"waiting for the node agent's %s condition on %s; %s; KubeVirt's rules decide from %s",
					HandoffSafeCondition, old.Name, lease.Detail, stamp(end))
			}
		}
		return allow(ReasonConditionWaitExceeded,
			"%s is Running and serves %s, all Ready; the node agent wrote no %s condition on %s within %s of %s running (%s)",
			cur.Name, list(gated), HandoffSafeCondition, old.Name, max(wait, 0), cur.Name, lease.Detail)
	}

	// False, Unknown or anything else: the agent says the old pod may still back a launcher
	// device, or cannot tell yet.
	reason := ReasonHandoffUnknown
	if cond.Status == corev1.ConditionFalse {
		reason = ReasonHandoffUnsafe
	}
	if lease.Alive {
		// A live agent's verdict stands, for as long as it takes: the old pod is what keeps
		// the VM's disk alive. Look again when the lease would expire; a renewal finds it
		// alive again, a dead agent is noticed then (it produces no event of its own).
		return block(reason, max(lease.Expiry.Sub(in.Now), minRequeue),
			"node agent on %s: %s; held while %s", old.Name, condText(cond), lease.Detail)
	}

	// No live agent behind the verdict (lease missing, expired, invalid, or unreadable with
	// nothing alive known): it may be a dead agent's last word, so it holds only until the
	// deadline. The clock starts when the current pod started running, or when the lease
	// expired if that was later: a dead agent gets the same grace as a live one would have.
	deadline := in.AgentDeadline
	if deadline == 0 {
		deadline = DefaultAgentDeadline
	}
	if deadline < 0 {
		return block(reason, RecheckInterval, "node agent on %s: %s; %s; no deadline", old.Name, condText(cond), lease.Detail)
	}
	start := since
	if lease.Expiry.After(start) {
		start = lease.Expiry
	}
	if start.IsZero() {
		// A pod without any timestamp (only synthetic input): the clock never starts.
		return block(reason, RecheckInterval,
			"node agent on %s: %s; %s; %s carries no time to count the deadline from", old.Name, condText(cond), lease.Detail, cur.Name)
	}
	end := start.Add(deadline)
	if !in.Now.Before(end) {
		return allow(ReasonAgentDeadlineExceeded,
			"the node agent still says %s about %s, but %s; the deadline (%s from %s) passed at %s",
			condText(cond), old.Name, lease.Detail, deadline, startText(start, since), stamp(end))
	}
	return block(reason, max(end.Sub(in.Now), minRequeue),
		"node agent on %s: %s; %s; deletion allowed anyway at %s (%s from %s)",
		old.Name, condText(cond), lease.Detail, stamp(end), deadline, startText(start, since))
}

func startText(start, since time.Time) string {
	if start.Equal(since) {
		return "the current pod running, " + stamp(start)
	}
	return "the lease's expiry, " + stamp(start)
}

// RunningSince is when the pod started running, as the gate measures the agent deadline:
// the latest lastTransitionTime among its True kubelet conditions (PodScheduled,
// PodReadyToStartContainers, Initialized, ContainersReady, Ready), else status.startTime,
// else metadata.creationTimestamp. Zero if the pod carries none of them.
func RunningSince(pod *corev1.Pod) time.Time {
	var latest time.Time
	for _, c := range pod.Status.Conditions {
		if c.Status != corev1.ConditionTrue || !kubeletCondition(c.Type) {
			continue
		}
		if t := c.LastTransitionTime.Time; t.After(latest) {
			latest = t
		}
	}
	if !latest.IsZero() {
		return latest
	}
	if pod.Status.StartTime != nil {
		return pod.Status.StartTime.Time
	}
	return pod.CreationTimestamp.Time
}

func kubeletCondition(t corev1.PodConditionType) bool {
	switch t {
	case corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized,
		corev1.ContainersReady, corev1.PodReady:
		return true
	}
	return false
}

// specVolumeKinds maps every volume name in the VMI spec (volumes and utility volumes) to
// how its attachment is judged.
func specVolumeKinds(vmi *v1.VirtualMachineInstance) map[string]volumeKind {
	kinds := make(map[string]volumeKind, len(vmi.Spec.Volumes)+len(vmi.Spec.UtilityVolumes))
	for _, vol := range vmi.Spec.Volumes {
		if vol.MemoryDump != nil {
			kinds[vol.Name] = mountedVolume
		} else {
			kinds[vol.Name] = diskVolume
		}
	}
	for _, uv := range vmi.Spec.UtilityVolumes {
		kinds[uv.Name] = mountedVolume
	}
	return kinds
}

func attached(kind volumeKind, phase v1.VolumePhase) bool {
	if phase == v1.VolumeReady {
		return true
	}
	return kind == mountedVolume && phase == v1.HotplugVolumeMounted
}

// podClaims maps the pod's PVC-backed volume names (named after VMI volumes in an
// attachment pod) to their claim names.
func podClaims(pod *corev1.Pod) map[string]string {
	claims := make(map[string]string)
	for _, vol := range pod.Spec.Volumes {
		if vol.PersistentVolumeClaim != nil {
			claims[vol.Name] = vol.PersistentVolumeClaim.ClaimName
		}
	}
	return claims
}

func findCondition(pod *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

func condText(c *corev1.PodCondition) string {
	s := string(c.Status)
	if c.Reason != "" {
		s += " (" + c.Reason + ")"
	}
	if c.Message != "" {
		s += ": " + c.Message
	}
	return s
}

func phaseOf(pod *corev1.Pod) string {
	if pod.Status.Phase == "" {
		return "in no phase"
	}
	return string(pod.Status.Phase)
}

func phaseOrNone(p v1.VolumePhase) string {
	if p == "" {
		return "no phase"
	}
	return string(p)
}

func list(names []string) string {
	return strings.Join(names, ", ")
}
