// Command gate-decide applies the cleanup gate (package gate) to one case given as JSON on
// stdin and prints the gate's decision as JSON on stdout. It lets programs that are not Go
// (the Rust race demo) use the gate's actual rules instead of a re-implementation.
//
// Input, one JSON object:
//
//	{
//	  "vmi":           VirtualMachineInstance (kubevirt.io/api/core/v1), required
//	  "currentPod":    Pod, the attachment pod KubeVirt keeps; null or absent: none
//	  "oldPod":        Pod, the attachment pod about to be deleted, required
//	  "lease":         Lease (coordination.k8s.io/v1), the agent's lease for the old pod's
//	                   node; null or absent: the read said NotFound
//	  "leaseError":    string; set: the read failed (not NotFound), "lease" is then the
//	                   last lease read, if any
//	  "now":           RFC 3339 time, the controller's clock, required
//	  "agentDeadline": Go duration ("5m", "-1s"); absent or "": the gate's default
//	  "conditionWait": Go duration ("30s"); absent or "": the gate's default
//	}
//
// Objects are their Kubernetes JSON, as the API server returns them. Lease times may be
// any RFC 3339 form (the API server writes microseconds; whole seconds are accepted too).
// Unknown top-level keys are an error, so that a misspelt one is not silently ignored.
//
// Output, one line:
//
//	{"allowed":false,"reason":"HandoffUnsafe","message":"...","requeueAfterSeconds":35,"lease":"Alive"}
//
// "lease" is how the gate judged the lease (Alive, Expired, Missing, Invalid, Unknown);
// absent when an earlier rule decided. Exit status: 0 with a decision (allowed or not),
// 2 when the input is unusable (the reason on stderr).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	v1 "kubevirt.io/api/core/v1"

	"github.com/hotplug-watchdog/hotplug-watchdog/contrib/kubevirt/gate"
)

// Output is what gate-decide prints.
type Output struct {
	Allowed             bool    `json:"allowed"`
	Reason              string  `json:"reason"`
	Message             string  `json:"message"`
	RequeueAfterSeconds float64 `json:"requeueAfterSeconds"`
	Lease               string  `json:"lease,omitempty"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gate-decide:", err)
		os.Exit(2)
	}
}

func run(stdin io.Reader, stdout io.Writer) error {
	in, err := readInput(stdin)
	if err != nil {
		return err
	}
	d := gate.MayDeleteOldAttachmentPod(in)
	out, err := json.Marshal(Output{
		Allowed:             d.Allowed,
		Reason:              d.Reason,
		Message:             d.Message,
		RequeueAfterSeconds: d.RequeueAfter.Seconds(),
		Lease:               string(d.Lease),
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}

var keys = []string{"vmi", "currentPod", "oldPod", "lease", "leaseError", "now", "agentDeadline", "conditionWait"}

func readInput(r io.Reader) (gate.Input, error) {
	var in gate.Input
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(r)
	if err := dec.Decode(&raw); err != nil {
		return in, fmt.Errorf("reading the input object: %w", err)
	}
	if raw == nil {
		return in, errors.New("the input is not a JSON object")
	}
	if dec.More() {
		return in, errors.New("more than one JSON value on stdin; give one object")
	}
	var unknown []string
	for k := range raw {
		if !slices.Contains(keys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return in, fmt.Errorf("unknown key(s) %s (known: %s)", strings.Join(unknown, ", "), strings.Join(keys, ", "))
	}

	if isNull(raw["vmi"]) {
		return in, errors.New(`"vmi" is required`)
	}
	in.VMI = &v1.VirtualMachineInstance{}
	if err := json.Unmarshal(raw["vmi"], in.VMI); err != nil {
		return in, fmt.Errorf(`"vmi": %w`, err)
	}
	if isNull(raw["oldPod"]) {
		return in, errors.New(`"oldPod" is required`)
	}
	in.OldPod = &corev1.Pod{}
	if err := json.Unmarshal(raw["oldPod"], in.OldPod); err != nil {
		return in, fmt.Errorf(`"oldPod": %w`, err)
	}
	if !isNull(raw["currentPod"]) {
		in.CurrentPod = &corev1.Pod{}
		if err := json.Unmarshal(raw["currentPod"], in.CurrentPod); err != nil {
			return in, fmt.Errorf(`"currentPod": %w`, err)
		}
	}
	if !isNull(raw["lease"]) {
		lease, err := decodeLease(raw["lease"])
		if err != nil {
			return in, fmt.Errorf(`"lease": %w`, err)
		}
		in.Lease = lease
	}
	if !isNull(raw["leaseError"]) {
		var msg string
		if err := json.Unmarshal(raw["leaseError"], &msg); err != nil {
			return in, fmt.Errorf(`"leaseError": %w`, err)
		}
		if msg != "" {
			in.LeaseError = errors.New(msg)
		}
	}

	if isNull(raw["now"]) {
		return in, errors.New(`"now" is required (RFC 3339)`)
	}
	var now string
	if err := json.Unmarshal(raw["now"], &now); err != nil {
		return in, fmt.Errorf(`"now": %w`, err)
	}
	t, err := time.Parse(time.RFC3339Nano, now)
	if err != nil {
		return in, fmt.Errorf(`"now": %w`, err)
	}
	in.Now = t

	if in.AgentDeadline, err = duration(raw, "agentDeadline"); err != nil {
		return in, err
	}
	if in.ConditionWait, err = duration(raw, "conditionWait"); err != nil {
		return in, err
	}
	return in, nil
}

// decodeLease decodes a Lease, accepting any RFC 3339 form for its MicroTime fields
// (metav1.MicroTime insists on exactly six fractional digits).
func decodeLease(b json.RawMessage) (*coordinationv1.Lease, error) {
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		return nil, err
	}
	if spec, ok := generic["spec"].(map[string]any); ok {
		for _, field := range []string{"acquireTime", "renewTime"} {
			s, ok := spec[field].(string)
			if !ok {
				continue
			}
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return nil, fmt.Errorf("spec.%s: %w", field, err)
			}
			spec[field] = t.UTC().Format("2006-01-02T15:04:05.000000Z07:00")
		}
	}
	normalized, err := json.Marshal(generic)
	if err != nil {
		return nil, err
	}
	lease := &coordinationv1.Lease{}
	if err := json.Unmarshal(normalized, lease); err != nil {
		return nil, err
	}
	return lease, nil
}

func duration(raw map[string]json.RawMessage, key string) (time.Duration, error) {
	if isNull(raw[key]) {
		return 0, nil
	}
	var s string
	if err := json.Unmarshal(raw[key], &s); err != nil {
		return 0, fmt.Errorf(`%q: a Go duration string such as "5m": %w`, key, err)
	}
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", key, err)
	}
	return d, nil
}

func isNull(b json.RawMessage) bool {
	return len(b) == 0 || bytes.Equal(bytes.TrimSpace(b), []byte("null"))
}
