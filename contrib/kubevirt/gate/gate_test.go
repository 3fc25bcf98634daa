package gate

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	v1 "kubevirt.io/api/core/v1"
)

// t0 is when the current attachment pod became Ready in most cases.
var t0 = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)

// node is where the VMI and its attachment pods run.
const node = "node1"

// ---- VMI helpers ----

type vmiOpt func(*v1.VirtualMachineInstance)

func newVMI(opts ...vmiOpt) *v1.VirtualMachineInstance {
	vmi := &v1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: "vm", Namespace: "ns"}}
	for _, o := range opts {
		o(vmi)
	}
	return vmi
}

func claimOf(vol string) string { return "pvc-" + vol }

// disk adds a hotpluggable PVC volume to the spec.
func disk(name string) vmiOpt {
	return func(vmi *v1.VirtualMachineInstance) {
		src := &v1.PersistentVolumeClaimVolumeSource{Hotpluggable: true}
		src.ClaimName = claimOf(name)
		vmi.Spec.Volumes = append(vmi.Spec.Volumes, v1.Volume{Name: name, VolumeSource: v1.VolumeSource{PersistentVolumeClaim: src}})
	}
}

func memoryDump(name string) vmiOpt {
	return func(vmi *v1.VirtualMachineInstance) {
		src := &v1.MemoryDumpVolumeSource{}
		src.ClaimName = claimOf(name)
		src.Hotpluggable = true
		vmi.Spec.Volumes = append(vmi.Spec.Volumes, v1.Volume{Name: name, VolumeSource: v1.VolumeSource{MemoryDump: src}})
	}
}

func utility(name string) vmiOpt {
	return func(vmi *v1.VirtualMachineInstance) {
		uv := v1.UtilityVolume{Name: name}
		uv.ClaimName = claimOf(name)
		vmi.Spec.UtilityVolumes = append(vmi.Spec.UtilityVolumes, uv)
	}
}

// status adds a hotplug volumeStatus entry (for spec volumes or removed ones alike).
func status(name string, phase v1.VolumePhase) vmiOpt {
	return func(vmi *v1.VirtualMachineInstance) {
		vmi.Status.VolumeStatus = append(vmi.Status.VolumeStatus, v1.VolumeStatus{
			Name: name, Phase: phase, HotplugVolume: &v1.HotplugVolumeStatus{},
		})
	}
}

// ---- pod helpers ----

type podOpt func(*corev1.Pod)

// newPod is an attachment pod with the hotplug-disks emptyDir and the given options.
func newPod(name string, phase corev1.PodPhase, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "ns", UID: types.UID("uid-" + name),
			Labels: map[string]string{"kubevirt.io": "hotplug-disk"},
		},
		Spec: corev1.PodSpec{NodeName: node, Volumes: []corev1.Volume{{
			Name: "hotplug-disks", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		}}},
		Status: corev1.PodStatus{Phase: phase},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// serves adds PVC pod volumes named after VMI volumes, with the claims the VMI uses.
func serves(vols ...string) podOpt {
	return func(p *corev1.Pod) {
		for _, v := range vols {
			servesClaim(v, claimOf(v))(p)
		}
	}
}

func servesClaim(vol, claim string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: vol, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
		}})
	}
}

func created(t time.Time) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t) }
}

func cond(typ corev1.PodConditionType, s corev1.ConditionStatus, at time.Time) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{
			Type: typ, Status: s, LastTransitionTime: metav1.NewTime(at),
		})
	}
}

// readySince gives a pod the kubelet conditions of a pod that became Ready at t.
func readySince(t time.Time) podOpt {
	return func(p *corev1.Pod) {
		created(t.Add(-10 * time.Second))(p)
		cond(corev1.PodScheduled, corev1.ConditionTrue, t.Add(-10*time.Second))(p)
		cond(corev1.PodInitialized, corev1.ConditionTrue, t.Add(-5*time.Second))(p)
		cond(corev1.ContainersReady, corev1.ConditionTrue, t)(p)
		cond(corev1.PodReady, corev1.ConditionTrue, t)(p)
	}
}

// handoff is the node agent's condition on a pod, with the agent's reasons.
func handoff(s corev1.ConditionStatus, at time.Time) podOpt {
	return func(p *corev1.Pod) {
		cond(HandoffSafeCondition, s, at)(p)
		c := &p.Status.Conditions[len(p.Status.Conditions)-1]
		switch s {
		case corev1.ConditionTrue:
			c.Reason, c.Message = "DevicesServedElsewhere", "every launcher device this pod serves is also served by another attachment pod"
		case corev1.ConditionFalse:
			c.Reason, c.Message = "SoleBacker", "only this pod serves the VM's a (7:1)"
		default:
			c.Reason, c.Message = "NotOnNode", "the pod's hotplug-disks directory is not on the node (yet)"
		}
	}
}

func deleting() podOpt {
	return func(p *corev1.Pod) { now := metav1.NewTime(t0); p.DeletionTimestamp = &now }
}

// runningCurrent is the usual current pod: Running and Ready since t0.
func runningCurrent(vols ...string) *corev1.Pod {
	return newPod("hp-volume-new", corev1.PodRunning, serves(vols...), readySince(t0))
}

// runningOld is the usual old pod: Running since long before t0.
func runningOld(vols []string, opts ...podOpt) *corev1.Pod {
	return newPod("hp-volume-old", corev1.PodRunning, append([]podOpt{serves(vols...), readySince(t0.Add(-time.Hour))}, opts...)...)
}

func vols(v ...string) []string { return v }

// ---- expectations ----

type want struct {
	allowed bool
	reason  string
	// requeue: exact RequeueAfter; -1 means "any positive value".
	requeue time.Duration
}

func check(t *testing.T, in Input, w want) Decision {
	t.Helper()
	d := MayDeleteOldAttachmentPod(in)
	if d.Allowed != w.allowed || d.Reason != w.reason {
		t.Fatalf("got Allowed=%v Reason=%s (%s); want Allowed=%v Reason=%s", d.Allowed, d.Reason, d.Message, w.allowed, w.reason)
	}
	switch {
	case w.requeue == -1 && d.RequeueAfter <= 0:
		t.Fatalf("RequeueAfter=%s, want > 0 (%s)", d.RequeueAfter, d.Message)
	case w.requeue != -1 && d.RequeueAfter != w.requeue:
		t.Fatalf("RequeueAfter=%s, want %s (%s)", d.RequeueAfter, w.requeue, d.Message)
	}
	if d.Message == "" {
		t.Fatalf("empty Message")
	}
	if d.Allowed && d.RequeueAfter != 0 {
		t.Fatalf("allowed with RequeueAfter=%s", d.RequeueAfter)
	}
	return d
}

func TestMayDeleteOldAttachmentPod(t *testing.T) {
	readyA := newVMI(disk("a"), status("a", v1.VolumeReady))
	readyAB := newVMI(disk("a"), disk("b"), status("a", v1.VolumeReady), status("b", v1.VolumeReady))
	oneMinuteIn := t0.Add(time.Minute)

	cases := []struct {
		name string
		in   Input
		want want
	}{
		// Rule 1.
		{"current pod Pending blocks", Input{
			VMI: readyA, OldPod: runningOld(vols("a")), CurrentPod: newPod("hp-volume-new", corev1.PodPending, serves("a")), Now: oneMinuteIn,
		}, want{false, ReasonCurrentPodNotRunning, RecheckInterval}},
		{"no current pod blocks", Input{
			VMI: readyA, OldPod: runningOld(vols("a")), Now: oneMinuteIn,
		}, want{false, ReasonCurrentPodNotRunning, RecheckInterval}},
		{"current pod being deleted blocks", Input{
			VMI: readyA, OldPod: runningOld(vols("a")), CurrentPod: newPod("hp-volume-new", corev1.PodRunning, serves("a"), readySince(t0), deleting()), Now: oneMinuteIn,
		}, want{false, ReasonCurrentPodNotRunning, RecheckInterval}},

		// Rule 4 with rules 1-3 met.
		{"all Ready, agent True allows", Input{
			VMI: readyAB, OldPod: runningOld(vols("a", "b"), handoff(corev1.ConditionTrue, oneMinuteIn)), CurrentPod: runningCurrent("a", "b"), Now: oneMinuteIn,
		}, want{true, ReasonHandoffSafe, 0}},
		{"agent False blocks until the deadline", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0)), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonHandoffUnsafe, 4 * time.Minute}},
		{"agent False past the deadline allows", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0)), CurrentPod: runningCurrent("a"), Now: t0.Add(DefaultAgentDeadline),
		}, want{true, ReasonAgentDeadlineExceeded, 0}},
		{"agent Unknown blocks like a missing signal", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionUnknown, t0)), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonHandoffUnknown, 4 * time.Minute}},
		{"agent Unknown past a custom deadline allows", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionUnknown, t0)), CurrentPod: runningCurrent("a"), Now: oneMinuteIn, AgentDeadline: 30 * time.Second,
		}, want{true, ReasonAgentDeadlineExceeded, 0}},
		{"deadline requeue never rounds down to zero", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0)), CurrentPod: runningCurrent("a"), Now: t0.Add(DefaultAgentDeadline - time.Millisecond),
		}, want{false, ReasonHandoffUnsafe, minRequeue}},
		{"negative deadline: agent False blocks indefinitely", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0)), CurrentPod: runningCurrent("a"), Now: t0.Add(24 * time.Hour), AgentDeadline: -1,
		}, want{false, ReasonHandoffUnsafe, RecheckInterval}},
		{"no agent condition: KubeVirt rules allow when volumes are Ready", Input{
			VMI: readyAB, OldPod: runningOld(vols("a", "b")), CurrentPod: runningCurrent("a", "b"), Now: t0,
		}, want{true, ReasonVolumesReadyNoAgent, 0}},
		// Decision: an old lastTransitionTime is not staleness. The agent writes only on
		// transitions, so the old pod's "sole backer" False dates from before the current
		// pod existed in exactly the case the gate is for.
		{"False older than the current pod is not stale and still blocks", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0.Add(-time.Hour))), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonHandoffUnsafe, 4 * time.Minute}},
		{"a container restart restarts the deadline clock", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0.Add(-time.Hour))),
			// Scheduled an hour ago, Ready again only since t0; the agent's own condition on
			// the current pod (written later) does not count.
			CurrentPod: newPod("hp-volume-new", corev1.PodRunning, serves("a"), created(t0.Add(-time.Hour)),
				cond(corev1.PodScheduled, corev1.ConditionTrue, t0.Add(-time.Hour)),
				cond(corev1.PodReady, corev1.ConditionTrue, t0),
				handoff(corev1.ConditionTrue, t0.Add(50*time.Second))),
			Now: oneMinuteIn,
		}, want{false, ReasonHandoffUnsafe, 4 * time.Minute}},

		// Rule 2.
		{"a volume not Ready blocks", Input{
			VMI:    newVMI(disk("a"), disk("b"), status("a", v1.VolumeReady), status("b", v1.HotplugVolumeMounted)),
			OldPod: runningOld(vols("a", "b"), handoff(corev1.ConditionTrue, t0)), CurrentPod: runningCurrent("a", "b"), Now: oneMinuteIn,
		}, want{false, ReasonVolumeNotReady, RecheckInterval}},
		{"a volume without status blocks", Input{
			VMI: newVMI(disk("a")), OldPod: runningOld(vols("a")), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonVolumeNotReady, RecheckInterval}},
		{"a new volume the old pod does not serve is not waited for", Input{
			VMI:    newVMI(disk("a"), disk("b"), status("a", v1.VolumeReady), status("b", v1.HotplugVolumeAttachedToNode)),
			OldPod: runningOld(vols("a")), CurrentPod: runningCurrent("a", "b"), Now: oneMinuteIn,
		}, want{true, ReasonVolumesReadyNoAgent, 0}},
		{"memory-dump and utility volumes need only MountedToPod", Input{
			VMI: newVMI(disk("a"), memoryDump("dump"), utility("util"),
				status("a", v1.VolumeReady), status("dump", v1.HotplugVolumeMounted), status("util", v1.HotplugVolumeMounted)),
			OldPod: runningOld(vols("a", "dump", "util")), CurrentPod: runningCurrent("a", "dump", "util"), Now: oneMinuteIn,
		}, want{true, ReasonVolumesReadyNoAgent, 0}},
		{"a utility volume not yet mounted blocks", Input{
			VMI:    newVMI(utility("util"), status("util", v1.HotplugVolumeAttachedToNode)),
			OldPod: runningOld(vols("util")), CurrentPod: runningCurrent("util"), Now: oneMinuteIn,
		}, want{false, ReasonVolumeNotReady, RecheckInterval}},

		// Rule 3.
		{"a volume served only by the old pod blocks", Input{
			VMI: readyAB, OldPod: runningOld(vols("a", "b"), handoff(corev1.ConditionTrue, t0)), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonVolumeNotServedByCurrentPod, RecheckInterval}},
		{"the same volume name with another claim blocks", Input{
			VMI:        readyA,
			OldPod:     runningOld(vols("a")),
			CurrentPod: newPod("hp-volume-new", corev1.PodRunning, servesClaim("a", "some-other-pvc"), readySince(t0)), Now: oneMinuteIn,
		}, want{false, ReasonVolumeNotServedByCurrentPod, RecheckInterval}},

		// Removed volumes: ignored by the gate.
		{"a removed volume does not block", Input{
			// x left the spec but is still Ready: KubeVirt's volumeReadyForPodDelete keeps
			// this pod on its own; the gate adds nothing for x.
			VMI:    newVMI(disk("a"), status("a", v1.VolumeReady), status("x", v1.VolumeReady)),
			OldPod: runningOld(vols("a", "x"), handoff(corev1.ConditionTrue, t0)), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{true, ReasonHandoffSafe, 0}},
		{"an old pod serving only removed volumes is left to KubeVirt", Input{
			VMI:    newVMI(disk("a"), status("a", v1.VolumeReady), status("x", v1.HotplugVolumeDetaching)),
			OldPod: runningOld(vols("x"), handoff(corev1.ConditionFalse, t0)), CurrentPod: newPod("hp-volume-new", corev1.PodPending, serves("a")), Now: oneMinuteIn,
		}, want{true, ReasonNoVolumesInSpec, 0}},

		// The old pod itself.
		{"a Pending old pod is not gated", Input{
			VMI: readyA, OldPod: newPod("hp-volume-old", corev1.PodPending, serves("a")), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{true, ReasonOldPodNotRunning, 0}},
		{"an old pod already being deleted is not gated", Input{
			VMI: readyA, OldPod: runningOld(vols("a"), deleting(), handoff(corev1.ConditionFalse, t0)), Now: oneMinuteIn,
		}, want{true, ReasonOldPodTerminating, 0}},
		{"missing VMI is invalid", Input{
			OldPod: runningOld(vols("a")), CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonInvalidInput, 0}},
		{"missing old pod is invalid", Input{
			VMI: readyA, CurrentPod: runningCurrent("a"), Now: oneMinuteIn,
		}, want{false, ReasonInvalidInput, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { check(t, c.in, c.want) })
	}
}

// kubevirt PR #18045: two VMIs exchange RWO PVCs. VMI 1 drops x and adds y; VMI 2 drops y
// and adds x. Each VMI's new attachment pod needs the PVC that the OTHER VMI's old pod
// still holds, so both new pods stay Pending. Before #18045 each controller kept its old
// pod as the fallback because its current pod was not Running: a permanent deadlock.
//
// The gate must not rebuild that cycle. An old pod whose in-spec volumes are all also
// served by the new pod, so that the only volume it serves and the new one does not is a
// removed one, never makes the gate wait for anything from another VMI.
func TestRWOExchange18045(t *testing.T) {
	now := t0.Add(time.Minute)

	t.Run("old pods serve only removed volumes", func(t *testing.T) {
		// Even a (confused) agent reporting False on the old pods cannot pin them: they
		// serve nothing that is still in the spec.
		vmi1 := newVMI(disk("y"), status("y", v1.VolumePending), status("x", v1.HotplugVolumeUnMounted))
		old1 := runningOld(vols("x"), handoff(corev1.ConditionFalse, t0))
		new1 := newPod("hp-volume-new", corev1.PodPending, serves("y"))

		vmi2 := newVMI(disk("x"), status("x", v1.VolumePending), status("y", v1.HotplugVolumeDetaching))
		old2 := runningOld(vols("y"), handoff(corev1.ConditionFalse, t0))
		new2 := newPod("hp-volume-new", corev1.PodPending, serves("x"))

		check(t, Input{VMI: vmi1, OldPod: old1, CurrentPod: new1, Now: now}, want{true, ReasonNoVolumesInSpec, 0})
		check(t, Input{VMI: vmi2, OldPod: old2, CurrentPod: new2, Now: now}, want{true, ReasonNoVolumesInSpec, 0})
	})

	t.Run("old pods also serve a kept volume the new pods serve too", func(t *testing.T) {
		// VMI 1 keeps a, drops x, adds y; VMI 2 keeps b, drops y, adds x. Once the new pods
		// run (the RWO PVCs were freed by KubeVirt's own removed-volume rules), the only
		// volume each old pod serves that its new pod does not is the removed one: allowed.
		vmi1 := newVMI(disk("a"), disk("y"), status("a", v1.VolumeReady), status("y", v1.HotplugVolumeMounted), status("x", v1.HotplugVolumeUnMounted))
		vmi2 := newVMI(disk("b"), disk("x"), status("b", v1.VolumeReady), status("x", v1.HotplugVolumeMounted), status("y", v1.HotplugVolumeDetaching))
		check(t, Input{VMI: vmi1, OldPod: runningOld(vols("a", "x")), CurrentPod: runningCurrent("a", "y"), Now: now},
			want{true, ReasonVolumesReadyNoAgent, 0})
		check(t, Input{VMI: vmi2, OldPod: runningOld(vols("b", "y"), handoff(corev1.ConditionTrue, t0)), CurrentPod: runningCurrent("b", "x"), Now: now},
			want{true, ReasonHandoffSafe, 0})

		// While the new pods are still Pending, such a mixed old pod is kept. That is not a
		// wait the gate adds: KubeVirt v1.9.0's fallback already keeps it
		// (podContainsVolumesToPreserve is true because it serves in-spec a), and the mixed
		// pod's hold on the removed RWO PVC is the starvation risk docs/CODEPATH.md §6
		// names, not a new cycle.
		check(t, Input{VMI: vmi1, OldPod: runningOld(vols("a", "x")), CurrentPod: newPod("hp-volume-new", corev1.PodPending, serves("a", "y")), Now: now},
			want{false, ReasonCurrentPodNotRunning, RecheckInterval})
	})
}

// kubevirt#16937 (open): with declarative hotplug, changes faster than roughly every 8 s
// keep superseding the Pending attachment pod, so nothing attaches and removed volumes are
// not released until the changes stop. A new pod is only created when no old pod is
// Pending (hasPendingPods), and the old Running pod is kept as the fallback meanwhile.
//
// The gate does not make this worse:
//   - it never keeps a Pending old pod (it could only slow down the churn);
//   - the Running old pod it keeps is the one v1.9.0's fallback already keeps, and a
//     Running pod does not count in hasPendingPods, so it never holds back creation;
//   - an old pod that serves only removed volumes is released exactly as today;
//   - the agent deadline clock starts only once a current pod runs, so the churn itself
//     cannot make AgentDeadlineExceeded fire early or late.
func TestLivelock16937(t *testing.T) {
	// P0 {a} has run for an hour; b was added (P1 {a,b}, still Pending), then c five
	// seconds later (P2 {a,b,c}, Pending, now current). The agent says P0 is the sole
	// backer of a's device.
	vmi := newVMI(disk("a"), disk("b"), disk("c"),
		status("a", v1.VolumeReady), status("b", v1.HotplugVolumeAttachedToNode), status("c", v1.VolumePending))
	p0 := runningOld(vols("a"), handoff(corev1.ConditionFalse, t0.Add(-time.Hour)))
	p1 := newPod("hp-volume-p1", corev1.PodPending, serves("a", "b"), created(t0.Add(-5*time.Second)))
	p2 := newPod("hp-volume-p2", corev1.PodPending, serves("a", "b", "c"), created(t0))
	now := t0.Add(2 * time.Second)

	t.Run("a superseded Pending pod is released", func(t *testing.T) {
		check(t, Input{VMI: vmi, OldPod: p1, CurrentPod: p2, Now: now}, want{true, ReasonOldPodNotRunning, 0})
	})
	t.Run("the Running old pod is kept, as v1.9.0's fallback keeps it", func(t *testing.T) {
		check(t, Input{VMI: vmi, OldPod: p0, CurrentPod: p2, Now: now}, want{false, ReasonCurrentPodNotRunning, RecheckInterval})
	})
	t.Run("long churn does not run the agent deadline", func(t *testing.T) {
		check(t, Input{VMI: vmi, OldPod: p0, CurrentPod: p2, Now: t0.Add(time.Hour)}, want{false, ReasonCurrentPodNotRunning, RecheckInterval})
	})
	t.Run("a removed volume's pod is released during the churn", func(t *testing.T) {
		churned := newVMI(disk("b"), disk("c"), status("a", v1.HotplugVolumeUnMounted),
			status("b", v1.HotplugVolumeAttachedToNode), status("c", v1.VolumePending))
		check(t, Input{VMI: churned, OldPod: p0, CurrentPod: p2, Now: now}, want{true, ReasonNoVolumesInSpec, 0})
	})
	t.Run("when the churn stops the deadline counts from the current pod's Ready", func(t *testing.T) {
		settled := newVMI(disk("a"), disk("b"), disk("c"),
			status("a", v1.VolumeReady), status("b", v1.VolumeReady), status("c", v1.VolumeReady))
		running := newPod("hp-volume-p2", corev1.PodRunning, serves("a", "b", "c"), readySince(t0.Add(time.Minute)))
		check(t, Input{VMI: settled, OldPod: p0, CurrentPod: running, Now: t0.Add(2 * time.Minute)},
			want{false, ReasonHandoffUnsafe, 4 * time.Minute})
		check(t, Input{VMI: settled, OldPod: p0, CurrentPod: running, Now: t0.Add(6 * time.Minute)},
			want{true, ReasonAgentDeadlineExceeded, 0})
	})
}

func TestRunningSince(t *testing.T) {
	cases := []struct {
		name string
		pod  *corev1.Pod
		want time.Time
	}{
		{"latest True kubelet condition", newPod("p", corev1.PodRunning, readySince(t0)), t0},
		{"False conditions and foreign types are ignored", newPod("p", corev1.PodRunning, created(t0.Add(-time.Hour)),
			cond(corev1.PodScheduled, corev1.ConditionTrue, t0),
			cond(corev1.PodReady, corev1.ConditionFalse, t0.Add(time.Minute)),
			cond(HandoffSafeCondition, corev1.ConditionTrue, t0.Add(2*time.Minute))), t0},
		{"startTime when no condition", newPod("p", corev1.PodRunning, created(t0.Add(-time.Hour)),
			func(p *corev1.Pod) { s := metav1.NewTime(t0); p.Status.StartTime = &s }), t0},
		{"creationTimestamp last", newPod("p", corev1.PodRunning, created(t0)), t0},
		{"zero when nothing is known", newPod("p", corev1.PodRunning), time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := RunningSince(c.pod); !got.Equal(c.want) {
				t.Fatalf("RunningSince = %s, want %s", got, c.want)
			}
		})
	}
}

func TestMessagesNameTheVolumes(t *testing.T) {
	d := MayDeleteOldAttachmentPod(Input{
		VMI:    newVMI(disk("a"), disk("b"), status("a", v1.VolumeReady), status("b", v1.HotplugVolumeMounted)),
		OldPod: runningOld(vols("a", "b")), CurrentPod: runningCurrent("a", "b"), Now: t0,
	})
	if !strings.Contains(d.Message, "b (MountedToPod)") || strings.Contains(d.Message, "a (") {
		t.Fatalf("message %q should name b and its phase, and only b", d.Message)
	}
}
