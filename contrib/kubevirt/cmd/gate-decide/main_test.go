package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// example is testdata/held.json (the README's example) as a generic object, so that each
// case can change a field.
func example(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("testdata/held.json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// set changes the field at a dotted path ("lease.spec.renewTime"); value nil deletes it.
func set(m map[string]any, path string, value any) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		m = m[p].(map[string]any)
	}
	if value == nil {
		delete(m, parts[len(parts)-1])
	} else {
		m[parts[len(parts)-1]] = value
	}
}

// oldCondition sets the old pod's HandoffSafe condition status ("" removes it).
func oldCondition(status string) func(map[string]any) {
	return func(m map[string]any) {
		conds := m["oldPod"].(map[string]any)["status"].(map[string]any)["conditions"].([]any)
		kept := conds[:0]
		for _, c := range conds {
			if c.(map[string]any)["type"] == "hotplug-watchdog.io/HandoffSafe" {
				if status == "" {
					continue
				}
				c.(map[string]any)["status"] = status
			}
			kept = append(kept, c)
		}
		m["oldPod"].(map[string]any)["status"].(map[string]any)["conditions"] = kept
	}
}

func decide(t *testing.T, m map[string]any) (Output, error) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := run(bytes.NewReader(b), &stdout); err != nil {
		return Output{}, err
	}
	var out Output
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("output %q: %v", stdout.String(), err)
	}
	if !strings.HasSuffix(stdout.String(), "}\n") || strings.Count(stdout.String(), "\n") != 1 {
		t.Fatalf("output is not one line: %q", stdout.String())
	}
	return out, nil
}

func TestDecisions(t *testing.T) {
	cases := []struct {
		name   string
		change []func(map[string]any)
		want   Output // Message is not compared
	}{
		{"the example: live lease, False: held until the lease would expire", nil,
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 35, Lease: "Alive"}},
		{"True: allowed", []func(map[string]any){oldCondition("True")},
			Output{Allowed: true, Reason: "HandoffSafe", Lease: "Alive"}},
		{"no lease: the deadline from the current pod running (12:00:00 + 5m)",
			[]func(map[string]any){func(m map[string]any) { set(m, "lease", nil) }},
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 240, Lease: "Missing"}},
		{"lease null is the same as absent",
			[]func(map[string]any){func(m map[string]any) { m["lease"] = json.RawMessage("null") }},
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 240, Lease: "Missing"}},
		{"expired lease: the deadline from its expiry",
			[]func(map[string]any){func(m map[string]any) {
				set(m, "lease.spec.renewTime", "2026-08-01T12:00:10Z") // expired 12:00:50
				set(m, "now", "2026-08-01T12:02:00Z")
			}},
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 230, Lease: "Expired"}},
		{"custom deadline passed: allowed",
			[]func(map[string]any){func(m map[string]any) { set(m, "lease", nil); set(m, "agentDeadline", "30s") }},
			Output{Allowed: true, Reason: "AgentDeadlineExceeded", Lease: "Missing"}},
		{"leaseDurationSeconds absent: invalid, never alive",
			[]func(map[string]any){func(m map[string]any) { set(m, "lease.spec.leaseDurationSeconds", nil) }},
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 240, Lease: "Invalid"}},
		{"read error with the last lease read still alive: held",
			[]func(map[string]any){func(m map[string]any) { m["leaseError"] = "forbidden" }},
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 35, Lease: "Unknown"}},
		{"live lease, no condition: the short wait is over at 12:00:30",
			[]func(map[string]any){oldCondition("")},
			Output{Allowed: true, Reason: "ConditionWaitExceeded", Lease: "Alive"}},
		{"live lease, no condition, longer wait",
			[]func(map[string]any){oldCondition(""), func(m map[string]any) { set(m, "conditionWait", "90s") }},
			Output{Reason: "HandoffPending", RequeueAfterSeconds: 30, Lease: "Alive"}},
		{"no lease, no condition: KubeVirt's rules",
			[]func(map[string]any){oldCondition(""), func(m map[string]any) { set(m, "lease", nil) }},
			Output{Allowed: true, Reason: "VolumesReadyNoAgent", Lease: "Missing"}},
		{"no current pod",
			[]func(map[string]any){func(m map[string]any) { set(m, "currentPod", nil) }},
			Output{Reason: "CurrentPodNotRunning", RequeueAfterSeconds: 10}},
		{"durations absent: the gate's defaults",
			[]func(map[string]any){func(m map[string]any) {
				set(m, "lease", nil)
				set(m, "agentDeadline", nil)
				set(m, "conditionWait", "")
			}},
			Output{Reason: "HandoffUnsafe", RequeueAfterSeconds: 240, Lease: "Missing"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := example(t)
			for _, f := range c.change {
				f(m)
			}
			got, err := decide(t, m)
			if err != nil {
				t.Fatal(err)
			}
			if got.Message == "" {
				t.Fatal("empty message")
			}
			got.Message = ""
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		name   string
		change func(map[string]any)
		want   string
	}{
		{"unknown key", func(m map[string]any) { m["agent_deadline"] = "5m" }, "unknown key(s) agent_deadline"},
		{"no now", func(m map[string]any) { delete(m, "now") }, `"now" is required`},
		{"bad now", func(m map[string]any) { m["now"] = "yesterday" }, `"now"`},
		{"no vmi", func(m map[string]any) { delete(m, "vmi") }, `"vmi" is required`},
		{"no old pod", func(m map[string]any) { m["oldPod"] = nil }, `"oldPod" is required`},
		{"bad duration", func(m map[string]any) { m["agentDeadline"] = "5 minutes" }, `"agentDeadline"`},
		{"duration as a number", func(m map[string]any) { m["conditionWait"] = 30 }, `"conditionWait"`},
		{"bad lease time", func(m map[string]any) { set(m, "lease.spec.renewTime", "noon") }, `spec.renewTime`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := example(t)
			c.change(m)
			_, err := decide(t, m)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	for _, in := range []string{"", "[]", "null", "{} {}"} {
		var out bytes.Buffer
		if err := run(strings.NewReader(in), &out); err == nil {
			t.Fatalf("input %q: no error (output %q)", in, out.String())
		}
	}
}

// The binary itself: stdin to stdout, exit status 0 with a decision and 2 on bad input.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := t.TempDir() + "/gate-decide"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	in, err := os.Open("testdata/held.json")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command(bin)
	cmd.Stdin = in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gate-decide: %v", err)
	}
	if !strings.HasPrefix(string(out), `{"allowed":false,"reason":"HandoffUnsafe",`) {
		t.Fatalf("output %s", out)
	}

	cmd = exec.Command(bin)
	cmd.Stdin = strings.NewReader(`{"now": "2026-08-01T12:00:00Z"}`)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(stderr.String(), `"vmi" is required`) {
		t.Fatalf("bad input: err %v, stderr %q; want exit status 2 and the reason", err, stderr.String())
	}
}

// The example in contrib/kubevirt/README.md gives the output it shows.
func TestReadmeExample(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i := strings.Index(readme, "Example (`cmd/gate-decide/testdata/held.json`")
	if i < 0 {
		t.Fatal("no gate-decide example in README.md")
	}
	var blocks []string
	for rest := readme[i:]; len(blocks) < 2; {
		start := strings.Index(rest, "```json\n")
		if start < 0 {
			t.Fatalf("README.md: %d json blocks after the example's heading, want 2", len(blocks))
		}
		rest = rest[start+len("```json\n"):]
		end := strings.Index(rest, "```")
		blocks = append(blocks, rest[:end])
		rest = rest[end+3:]
	}
	var out bytes.Buffer
	if err := run(strings.NewReader(blocks[0]), &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != blocks[1] {
		t.Fatalf("README.md shows\n%s\nbut gate-decide prints\n%s", blocks[1], out.String())
	}
}
