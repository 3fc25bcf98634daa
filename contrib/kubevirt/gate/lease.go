package gate

import (
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// The node agent's liveness Lease (coordination.k8s.io/v1). One per node, in the agent's
// namespace, named LeaseName(node). The agent sets spec.holderIdentity to
// "<node>/<agent pod>", spec.acquireTime when it creates the lease, and renews
// spec.renewTime every renew interval (10 s by default, at most 20 s) with
// spec.leaseDurationSeconds 40 by default (at most 60). It renews only while it is
// healthy, so "alive" means "an agent is on the node and judging its pods".
const (
	// LeaseNamePrefix + node name is the lease's name.
	LeaseNamePrefix = "hotplug-watchdog-"
	// DefaultLeaseNamespace is the agent's namespace when nothing else is configured.
	DefaultLeaseNamespace = "hotplug-watchdog"
	// MaxLeaseDuration caps spec.leaseDurationSeconds. The agent never writes more than
	// 60 s; a lease claiming more (a misconfigured or foreign writer) is counted as 60 s,
	// so one bad lease cannot stretch a dead agent's hold to hours.
	MaxLeaseDuration = 60 * time.Second
)

// LeaseName is the name of the agent's lease for a node.
func LeaseName(nodeName string) string { return LeaseNamePrefix + nodeName }

// LeaseState is what the gate makes of the agent's lease.
type LeaseState string

const (
	// LeaseAlive: renewTime (acquireTime if renewTime is nil) + leaseDurationSeconds is
	// after Now.
	LeaseAlive LeaseState = "Alive"
	// LeaseExpired: the lease exists and is valid, but that time is not after Now.
	LeaseExpired LeaseState = "Expired"
	// LeaseMissing: no lease (the controller's read said NotFound).
	LeaseMissing LeaseState = "Missing"
	// LeaseInvalid: a lease that cannot say when it expires: leaseDurationSeconds nil or
	// not positive, no renewTime and no acquireTime, or a lease named for another node.
	// Never alive, and it gives no expiry to count the deadline from (a writer that keeps
	// renewing an invalid lease must not push the deadline forever).
	LeaseInvalid LeaseState = "Invalid"
	// LeaseUnknown: the read failed for another reason than NotFound. If the controller
	// passed the last lease it did read, that lease's expiry still counts (see
	// Input.LeaseError).
	LeaseUnknown LeaseState = "Unknown"
)

// AgentLease is the lease as the gate judged it.
type AgentLease struct {
	State LeaseState
	// Alive: the agent counts as alive. True for LeaseAlive, and for LeaseUnknown when the
	// last lease read has not expired yet (liveness is purely a matter of time: a lease
	// read as alive stays alive until its expiry, unless it is deleted).
	Alive bool
	// Expiry is when the lease stops (Alive) or stopped (Expired, or Unknown with a last
	// known lease) counting as alive; zero when it cannot be told.
	Expiry time.Time
	// Detail names the lease and what decided, for messages.
	Detail string
}

// JudgeLease judges the agent's lease for nodeName at now.
//
// lease is the lease the controller read (nil: NotFound). readErr is a read error other
// than NotFound; then lease, if not nil, is the last lease the controller did read, and its
// expiry still counts: the agent was alive until then, and nothing is known after. An
// empty nodeName skips the check that the lease belongs to that node.
//
// The times are compared with now as they are: renewTime is the agent's clock, now the
// controller's. A skew of S moves the expiry by S; a renewTime in the future keeps the
// lease alive until renewTime + duration. Nothing here corrects that (see the package
// documentation).
func JudgeLease(lease *coordinationv1.Lease, readErr error, nodeName string, now time.Time) AgentLease {
	if readErr != nil {
		j := AgentLease{State: LeaseUnknown, Detail: fmt.Sprintf("the agent's lease could not be read (%v)", readErr)}
		if lease != nil {
			if last := judgeRead(lease, nodeName, now); !last.Expiry.IsZero() {
				j.Expiry = last.Expiry
				j.Alive = last.State == LeaseAlive
				j.Detail += fmt.Sprintf("; the last one read (%s) %s", lease.Name, expiryText(last.Expiry, now))
			}
		}
		return j
	}
	if lease == nil {
		name := "the agent's lease"
		if nodeName != "" {
			name = "lease " + LeaseName(nodeName)
		}
		return AgentLease{State: LeaseMissing, Detail: name + " does not exist"}
	}
	return judgeRead(lease, nodeName, now)
}

func judgeRead(lease *coordinationv1.Lease, nodeName string, now time.Time) AgentLease {
	invalid := func(why string) AgentLease {
		return AgentLease{State: LeaseInvalid, Detail: fmt.Sprintf("lease %s %s, so it does not count as alive", lease.Name, why)}
	}
	if nodeName != "" && lease.Name != LeaseName(nodeName) {
		return invalid(fmt.Sprintf("is not node %s's (%s)", nodeName, LeaseName(nodeName)))
	}
	if lease.Spec.LeaseDurationSeconds == nil || *lease.Spec.LeaseDurationSeconds <= 0 {
		return invalid("has no positive leaseDurationSeconds")
	}
	var renewed time.Time
	switch {
	case lease.Spec.RenewTime != nil:
		renewed = lease.Spec.RenewTime.Time
	case lease.Spec.AcquireTime != nil:
		renewed = lease.Spec.AcquireTime.Time
	default:
		return invalid("has neither renewTime nor acquireTime")
	}
	d := min(time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second, MaxLeaseDuration)
	expiry := renewed.Add(d)
	j := AgentLease{State: LeaseExpired, Expiry: expiry}
	if expiry.After(now) {
		j.State, j.Alive = LeaseAlive, true
	}
	holder := ""
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		holder = " (held by " + *lease.Spec.HolderIdentity + ")"
	}
	j.Detail = fmt.Sprintf("lease %s%s %s", lease.Name, holder, expiryText(expiry, now))
	return j
}

// expiryText leaves out the expiry of a live lease: it moves with every renewal, and a
// held pod's message should stay the same from one sync to the next, so that the
// controller's event recorder folds the repeated Warning events into one with a count.
func expiryText(expiry, now time.Time) string {
	if expiry.After(now) {
		return "is alive"
	}
	return "expired at " + stamp(expiry)
}

// stamp is an absolute time for messages (never "N s ago", which changes every sync).
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
