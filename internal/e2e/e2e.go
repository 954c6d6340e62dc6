// Package e2e holds what the end-to-end test packages share: building the l2lb binary they run,
// deciding whether namespace tests can run here (with CI=true they must fail, not skip, when
// something is missing), and driving `l2lb helper` over its pipes as CommuniGate Pro does
// (Helper).
package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ErrNoModule means the tests do not run inside the l2lb module.
var ErrNoModule = errors.New("e2e: not inside a Go module")

// ModuleRoot returns the directory of the go.mod the tests run in.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("e2e: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", ErrNoModule
	}
	return filepath.Dir(gomod), nil
}

// BuildL2LB builds ./cmd/l2lb with CGO_ENABLED=0 (as it ships) into dir and returns its path.
func BuildL2LB(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "l2lb")
	build := exec.Command("go", "build", "-o", bin, "./cmd/l2lb")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("e2e: building ./cmd/l2lb with CGO_ENABLED=0 failed: %v\n%s", err, out)
	}
	return bin, nil
}

// Missing returns what this machine lacks to build namespace testbeds ("" when nothing): root
// privileges, then each of the given tools (default: iproute2's ip).
func Missing(tools ...string) string {
	if os.Geteuid() != 0 {
		return "root privileges"
	}
	if len(tools) == 0 {
		tools = []string{"ip"}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return "the " + tool + " command"
		}
	}
	return ""
}

// Prereq reports a missing prerequisite: under CI=true the test fails (CI must run every test),
// elsewhere it is skipped with the reason.
func Prereq(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing (CI=true): "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// Require fails the test when CI=true and missing is not empty, and skips it otherwise with the
// reason.
func Require(t testing.TB, missing, what string) {
	t.Helper()
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s are unavailable: %s needs network namespaces", missing, what)
	}
	t.Skipf("needs %s to build the namespace testbed (%s)", missing, what)
}
