// Package deploy holds the RBAC the patched virt-controller needs; this test checks it.
package deploy

import (
	"bytes"
	"os"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/hotplug-watchdog/hotplug-watchdog/contrib/kubevirt/gate"
)

// TestLeaseReader: the Role grants exactly get on leases in the agent's default namespace,
// and the RoleBinding gives it to KubeVirt's controller ServiceAccount. Strict decoding
// catches misspelt fields, which the API server would drop silently.
func TestLeaseReader(t *testing.T) {
	b, err := os.ReadFile("virt-controller-lease-reader.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := bytes.Split(b, []byte("\n---\n"))
	if len(docs) != 2 {
		t.Fatalf("%d YAML documents, want 2 (Role, RoleBinding)", len(docs))
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(docs[0], &role); err != nil {
		t.Fatalf("Role: %v", err)
	}
	var binding rbacv1.RoleBinding
	if err := yaml.UnmarshalStrict(docs[1], &binding); err != nil {
		t.Fatalf("RoleBinding: %v", err)
	}

	if role.Kind != "Role" || role.APIVersion != "rbac.authorization.k8s.io/v1" || role.Namespace != gate.DefaultLeaseNamespace {
		t.Fatalf("Role: kind %s, apiVersion %s, namespace %s", role.Kind, role.APIVersion, role.Namespace)
	}
	if len(role.Rules) != 1 {
		t.Fatalf("Role has %d rules, want 1", len(role.Rules))
	}
	r := role.Rules[0]
	if !equal(r.APIGroups, "coordination.k8s.io") || !equal(r.Resources, "leases") || !equal(r.Verbs, "get") || len(r.ResourceNames) != 0 {
		t.Fatalf("Role rule %+v, want get on coordination.k8s.io leases", r)
	}

	if binding.Kind != "RoleBinding" || binding.Namespace != role.Namespace {
		t.Fatalf("RoleBinding: kind %s, namespace %s", binding.Kind, binding.Namespace)
	}
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name}) {
		t.Fatalf("roleRef %+v does not name the Role %s", binding.RoleRef, role.Name)
	}
	want := rbacv1.Subject{Kind: "ServiceAccount", Name: "kubevirt-controller", Namespace: "kubevirt"}
	if len(binding.Subjects) != 1 || binding.Subjects[0] != want {
		t.Fatalf("subjects %+v, want %+v", binding.Subjects, want)
	}
}

func equal(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}
