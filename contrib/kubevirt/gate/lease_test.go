package gate

import (
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	v1 "kubevirt.io/api/core/v1"
)

// ---- lease helpers ----

type leaseOpt func(*coordinationv1.Lease)

// agentLease is the agent's lease for node, as the agent writes it: acquired an hour
// before t0, leaseDurationSeconds 40, held by "<node>/<pod>".
func agentLease(opts ...leaseOpt) *coordinationv1.Lease {
	acquired := metav1.NewMicroTime(t0.Add(-time.Hour))
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: LeaseName(node), Namespace: DefaultLeaseNamespace},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr(node + "/hotplug-watchdog-x7k2p"),
			LeaseDurationSeconds: ptr(int32(40)),
			AcquireTime:          &acquired,
		},
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

func renewed(at time.Time) leaseOpt {
	return func(l *coordinationv1.Lease) { t := metav1.NewMicroTime(at); l.Spec.RenewTime = &t }
}

func duration(seconds *int32) leaseOpt {
	return func(l *coordinationv1.Lease) { l.Spec.LeaseDurationSeconds = seconds }
}

func acquired(at *time.Time) leaseOpt {
	return func(l *coordinationv1.Lease) {
		l.Spec.AcquireTime = nil
		if at != nil {
			t := metav1.NewMicroTime(*at)
			l.Spec.AcquireTime = &t
		}
	}
}

func named(name string) leaseOpt {
	return func(l *coordinationv1.Lease) { l.Name = name }
}

func ptr[T any](v T) *T { return &v }

var errForbidden = errors.New(`leases.coordination.k8s.io "hotplug-watchdog-node1" is forbidden`)

// TestAgentRule is the decision table of rule 4 (rules 1-3 met: the current pod runs since
// t0 and serves a, which is Ready): the old pod's HandoffSafe condition against the
// agent's lease.
func TestAgentRule(t *testing.T) {
	readyA := newVMI(disk("a"), status("a", v1.VolumeReady))
	current := runningCurrent("a")
	oldWith := func(s corev1.ConditionStatus) *corev1.Pod {
		return runningOld(vols("a"), handoff(s, t0.Add(-time.Hour)))
	}
	oldWithout := runningOld(vols("a"))
	at := func(now time.Time, old *corev1.Pod, lease *coordinationv1.Lease) Input {
		return Input{VMI: readyA, OldPod: old, CurrentPod: current, Lease: lease, Now: now}
	}
	withErr := func(in Input, err error) Input { in.LeaseError = err; return in }
	withDeadline := func(in Input, d time.Duration) Input { in.AgentDeadline = d; return in }
	withWait := func(in Input, d time.Duration) Input { in.ConditionWait = d; return in }

	m := func(d time.Duration) time.Time { return t0.Add(d) }
	const h = time.Hour

	cases := []struct {
		name  string
		in    Input
		want  want
		lease LeaseState
	}{
		// HandoffSafe=True: allowed, whatever the lease says.
		{"True, lease alive", at(m(time.Minute), oldWith(corev1.ConditionTrue), agentLease(renewed(m(55*time.Second)))),
			want{true, ReasonHandoffSafe, 0}, LeaseAlive},
		{"True, no lease", at(m(time.Minute), oldWith(corev1.ConditionTrue), nil),
			want{true, ReasonHandoffSafe, 0}, LeaseMissing},
		{"True, lease unreadable", withErr(at(m(time.Minute), oldWith(corev1.ConditionTrue), nil), errForbidden),
			want{true, ReasonHandoffSafe, 0}, LeaseUnknown},

		// Lease alive and False/Unknown: held with no deadline; requeue when the lease
		// would expire.
		{"alive + False: held, requeue at the lease's expiry", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(55*time.Second)))),
			want{false, ReasonHandoffUnsafe, 35 * time.Second}, LeaseAlive},
		{"alive + False for six hours: still held", at(m(6*h), oldWith(corev1.ConditionFalse), agentLease(renewed(m(6*h-10*time.Second)))),
			want{false, ReasonHandoffUnsafe, 30 * time.Second}, LeaseAlive},
		{"alive + False for a day, with a 30 s deadline configured: still held", withDeadline(at(m(24*h), oldWith(corev1.ConditionFalse), agentLease(renewed(m(24*h)))), 30*time.Second),
			want{false, ReasonHandoffUnsafe, 40 * time.Second}, LeaseAlive},
		{"alive + Unknown: held", at(m(3*h), oldWith(corev1.ConditionUnknown), agentLease(renewed(m(3*h-20*time.Second)))),
			want{false, ReasonHandoffUnknown, 20 * time.Second}, LeaseAlive},
		{"alive + False, lease about to expire: requeue at least 1 s", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(time.Minute-40*time.Second+time.Millisecond)))),
			want{false, ReasonHandoffUnsafe, minRequeue}, LeaseAlive},
		{"renewTime nil: acquireTime counts, alive", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(acquired(ptr(m(50*time.Second))))),
			want{false, ReasonHandoffUnsafe, 30 * time.Second}, LeaseAlive},

		// Lease missing or expired and False/Unknown: the deadline, from the later of the
		// current pod running (t0) and the lease's expiry.
		{"no lease + False: deadline from the current pod running", at(m(time.Minute), oldWith(corev1.ConditionFalse), nil),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseMissing},
		{"no lease + False past the deadline: allowed", at(m(5*time.Minute), oldWith(corev1.ConditionFalse), nil),
			want{true, ReasonAgentDeadlineExceeded, 0}, LeaseMissing},
		{"no lease + Unknown past a custom deadline: allowed", withDeadline(at(m(time.Minute), oldWith(corev1.ConditionUnknown), nil), 30*time.Second),
			want{true, ReasonAgentDeadlineExceeded, 0}, LeaseMissing},
		{"lease expired before the current pod ran: deadline from the current pod", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(-h)))),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseExpired},
		// The agent held the pod for two hours, then died: renewed last at t0+2h, expired
		// at t0+2h+40s. The deadline counts from that expiry, not from t0.
		{"lease expires after hours of holding: deadline counts from the expiry", at(m(2*h+time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(2*h)))),
			want{false, ReasonHandoffUnsafe, 4*time.Minute + 40*time.Second}, LeaseExpired},
		{"... and allows once the deadline from the expiry has passed", at(m(2*h+40*time.Second+5*time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(2*h)))),
			want{true, ReasonAgentDeadlineExceeded, 0}, LeaseExpired},
		{"renewTime nil: acquireTime + duration is the expiry", at(m(h+time.Minute), oldWith(corev1.ConditionFalse), agentLease(acquired(ptr(m(h))))),
			want{false, ReasonHandoffUnsafe, 4*time.Minute + 40*time.Second}, LeaseExpired},
		{"negative deadline: a dead agent's False holds indefinitely", withDeadline(at(m(24*h), oldWith(corev1.ConditionFalse), agentLease(renewed(m(h)))), -1),
			want{false, ReasonHandoffUnsafe, RecheckInterval}, LeaseExpired},

		// Leases that cannot say when they expire: never alive, no expiry to count from.
		{"leaseDurationSeconds nil: not alive, deadline from the current pod", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(time.Minute)), duration(nil))),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseInvalid},
		{"leaseDurationSeconds 0, renewed just now: not alive, deadline passes", at(m(5*time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(5*time.Minute)), duration(ptr(int32(0))))),
			want{true, ReasonAgentDeadlineExceeded, 0}, LeaseInvalid},
		{"neither renewTime nor acquireTime: not alive", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(acquired(nil))),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseInvalid},
		{"another node's lease does not count", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(time.Minute)), named(LeaseName("node2")))),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseInvalid},
		{"leaseDurationSeconds over 60 counts as 60", at(m(2*h), oldWith(corev1.ConditionFalse), agentLease(renewed(m(2*h-2*time.Minute)), duration(ptr(int32(3600))))),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseExpired},

		// The lease could not be read (not NotFound): unknown, treated conservatively.
		{"unreadable, none read before + False: held, bounded by the deadline from the current pod", withErr(at(m(time.Minute), oldWith(corev1.ConditionFalse), nil), errForbidden),
			want{false, ReasonHandoffUnsafe, 4 * time.Minute}, LeaseUnknown},
		{"unreadable, none read before + False past the deadline: allowed", withErr(at(m(5*time.Minute), oldWith(corev1.ConditionFalse), nil), errForbidden),
			want{true, ReasonAgentDeadlineExceeded, 0}, LeaseUnknown},
		{"unreadable, the last lease read is still alive: held with no deadline", withErr(at(m(6*h), oldWith(corev1.ConditionFalse), agentLease(renewed(m(6*h-15*time.Second)))), errors.New("context deadline exceeded")),
			want{false, ReasonHandoffUnsafe, 25 * time.Second}, LeaseUnknown},
		{"unreadable, the last lease read expired: deadline from its expiry", withErr(at(m(2*h+time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(2*h)))), errors.New("the server is currently unable to handle the request")),
			want{false, ReasonHandoffUnsafe, 4*time.Minute + 40*time.Second}, LeaseUnknown},

		// No condition on the old pod.
		{"no lease + no condition: KubeVirt's rules", at(m(time.Second), oldWithout, nil),
			want{true, ReasonVolumesReadyNoAgent, 0}, LeaseMissing},
		{"expired lease + no condition: KubeVirt's rules", at(m(time.Second), oldWithout, agentLease(renewed(m(-time.Minute)))),
			want{true, ReasonVolumesReadyNoAgent, 0}, LeaseExpired},
		{"invalid lease + no condition: KubeVirt's rules", at(m(time.Second), oldWithout, agentLease(renewed(m(0)), duration(ptr(int32(0))))),
			want{true, ReasonVolumesReadyNoAgent, 0}, LeaseInvalid},
		{"alive + no condition: a short wait from the current pod running", at(m(10*time.Second), oldWithout, agentLease(renewed(m(9*time.Second)))),
			want{false, ReasonHandoffPending, 20 * time.Second}, LeaseAlive},
		{"alive + no condition, lease runs out before the wait: requeue at its expiry", at(m(10*time.Second), oldWithout, agentLease(renewed(m(-25*time.Second)))),
			want{false, ReasonHandoffPending, 5 * time.Second}, LeaseAlive},
		{"alive + no condition after the wait: KubeVirt's rules", at(m(30*time.Second), oldWithout, agentLease(renewed(m(25*time.Second)))),
			want{true, ReasonConditionWaitExceeded, 0}, LeaseAlive},
		{"alive + no condition, custom wait", withWait(at(m(time.Minute), oldWithout, agentLease(renewed(m(time.Minute)))), 90*time.Second),
			want{false, ReasonHandoffPending, 30 * time.Second}, LeaseAlive},
		{"alive + no condition, negative wait: KubeVirt's rules at once", withWait(at(m(time.Second), oldWithout, agentLease(renewed(m(time.Second)))), -1),
			want{true, ReasonConditionWaitExceeded, 0}, LeaseAlive},
		{"unreadable + no condition: the same short wait", withErr(at(m(10*time.Second), oldWithout, nil), errForbidden),
			want{false, ReasonHandoffPending, 20 * time.Second}, LeaseUnknown},
		{"unreadable + no condition after the wait: KubeVirt's rules", withErr(at(m(30*time.Second), oldWithout, nil), errForbidden),
			want{true, ReasonConditionWaitExceeded, 0}, LeaseUnknown},

		// Clock skew is not corrected: renewTime (the agent's clock) is compared with Now
		// (the controller's). An agent clock an hour ahead keeps its lease alive for an
		// hour and 40 s after its last renewal.
		{"skew: a renewTime in the future keeps the lease alive until renewTime + duration", at(m(time.Minute), oldWith(corev1.ConditionFalse), agentLease(renewed(m(h)))),
			want{false, ReasonHandoffUnsafe, h - time.Minute + 40*time.Second}, LeaseAlive},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := check(t, c.in, c.want)
			if d.Lease != c.lease {
				t.Fatalf("Decision.Lease = %q, want %q (%s)", d.Lease, c.lease, d.Message)
			}
		})
	}
}

// The lease is looked at only in rule 4: the earlier rules decide without it.
func TestLeaseIgnoredBeforeRule4(t *testing.T) {
	live := agentLease(renewed(t0))
	for _, in := range []Input{
		{VMI: newVMI(disk("a"), status("a", v1.VolumeReady)), OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0)),
			CurrentPod: newPod("hp-volume-new", corev1.PodPending, serves("a")), Lease: live, Now: t0},
		{VMI: newVMI(disk("a"), status("a", v1.VolumeReady)), OldPod: newPod("hp-volume-old", corev1.PodPending, serves("a")),
			CurrentPod: runningCurrent("a"), Lease: live, Now: t0},
	} {
		if d := MayDeleteOldAttachmentPod(in); d.Lease != "" {
			t.Fatalf("%s: Decision.Lease = %q, want empty", d.Reason, d.Lease)
		}
	}
}

// A held pod's message must not change with each renewal: the patched controller records
// a Warning event per sync, and the event recorder folds only identical messages.
func TestHeldMessageStableAcrossRenewals(t *testing.T) {
	in := Input{VMI: newVMI(disk("a"), status("a", v1.VolumeReady)), OldPod: runningOld(vols("a"), handoff(corev1.ConditionFalse, t0)),
		CurrentPod: runningCurrent("a")}
	first := in
	first.Now, first.Lease = t0.Add(time.Hour), agentLease(renewed(t0.Add(time.Hour-5*time.Second)))
	second := in
	second.Now, second.Lease = t0.Add(2*time.Hour), agentLease(renewed(t0.Add(2*time.Hour-7*time.Second)))
	a, b := MayDeleteOldAttachmentPod(first), MayDeleteOldAttachmentPod(second)
	if a.Reason != ReasonHandoffUnsafe || a.Message != b.Message {
		t.Fatalf("messages differ:\n%s: %s\n%s: %s", a.Reason, a.Message, b.Reason, b.Message)
	}
	if !strings.Contains(a.Message, "held while lease hotplug-watchdog-node1 (held by node1/hotplug-watchdog-x7k2p) is alive") {
		t.Fatalf("message does not name the lease and its holder: %s", a.Message)
	}
}

func TestJudgeLease(t *testing.T) {
	now := t0
	cases := []struct {
		name   string
		lease  *coordinationv1.Lease
		err    error
		state  LeaseState
		alive  bool
		expiry time.Time
	}{
		{"renewed 10 s ago", agentLease(renewed(now.Add(-10 * time.Second))), nil, LeaseAlive, true, now.Add(30 * time.Second)},
		{"expiry exactly now is not alive", agentLease(renewed(now.Add(-40 * time.Second))), nil, LeaseExpired, false, now},
		{"renewTime nil, acquired 10 s ago", agentLease(acquired(ptr(now.Add(-10 * time.Second)))), nil, LeaseAlive, true, now.Add(30 * time.Second)},
		{"renewTime wins over acquireTime", agentLease(renewed(now.Add(-time.Hour)), acquired(ptr(now))), nil, LeaseExpired, false, now.Add(-time.Hour + 40*time.Second)},
		{"missing", nil, nil, LeaseMissing, false, time.Time{}},
		{"duration nil", agentLease(renewed(now), duration(nil)), nil, LeaseInvalid, false, time.Time{}},
		{"duration 0", agentLease(renewed(now), duration(ptr(int32(0)))), nil, LeaseInvalid, false, time.Time{}},
		{"duration negative", agentLease(renewed(now), duration(ptr(int32(-5)))), nil, LeaseInvalid, false, time.Time{}},
		{"duration capped at 60 s", agentLease(renewed(now), duration(ptr(int32(600)))), nil, LeaseAlive, true, now.Add(MaxLeaseDuration)},
		{"no times", agentLease(acquired(nil)), nil, LeaseInvalid, false, time.Time{}},
		{"another node's", agentLease(renewed(now), named("hotplug-watchdog-node2")), nil, LeaseInvalid, false, time.Time{}},
		{"read error, nothing known", nil, errForbidden, LeaseUnknown, false, time.Time{}},
		{"read error, last read alive", agentLease(renewed(now.Add(-time.Second))), errForbidden, LeaseUnknown, true, now.Add(39 * time.Second)},
		{"read error, last read expired", agentLease(renewed(now.Add(-time.Minute))), errForbidden, LeaseUnknown, false, now.Add(-20 * time.Second)},
		{"read error, last read invalid", agentLease(renewed(now), duration(nil)), errForbidden, LeaseUnknown, false, time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j := JudgeLease(c.lease, c.err, node, now)
			if j.State != c.state || j.Alive != c.alive || !j.Expiry.Equal(c.expiry) || j.Detail == "" {
				t.Fatalf("got %+v; want state %s alive %v expiry %s", j, c.state, c.alive, c.expiry)
			}
		})
	}
	if j := JudgeLease(agentLease(renewed(now), named("whatever")), nil, "", now); j.State != LeaseAlive {
		t.Fatalf("an empty node name skips the name check; got %+v", j)
	}
}
