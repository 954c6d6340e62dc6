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

// BuildL2LB builds ./cmd/l2lb into dir and returns its path. When the tests themselves run
// under the race detector (go test -race, as CI runs them), the binary is built with -race too,
// so the end-to-end suites check the real process for data races; the detector needs cgo, and
// GORACE makes a racy process exit with RaceExitCode (the report goes to its standard error, see
// RaceReport). Otherwise it is built as it ships, with CGO_ENABLED=0.
func BuildL2LB(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "l2lb")
	args, env := []string{"build", "-o", bin}, "CGO_ENABLED=0"
	if raceEnabled {
		args, env = append(args, "-race"), "CGO_ENABLED=1"
		// For the children started from here. atexit_sleep_ms=0: the detector otherwise sleeps a
		// second before exiting, longer than the helper contract allows after QUIT.
		os.Setenv("GORACE", fmt.Sprintf("exitcode=%d atexit_sleep_ms=0", RaceExitCode))
	}
	build := exec.Command("go", append(args, "./cmd/l2lb")...)
	build.Dir = root
	build.Env = append(os.Environ(), env)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("e2e: go %s ./cmd/l2lb (%s) failed: %v\n%s", strings.Join(args, " "), env, err, out)
	}
	return bin, nil
}

// RaceExitCode is the exit status of an l2lb built by BuildL2LB under -race that saw a data race.
const RaceExitCode = 66

// RaceReport returns the race detector's reports in a process's standard error ("" if none).
func RaceReport(stderr string) string {
	i := strings.Index(stderr, "WARNING: DATA RACE")
	if i < 0 {
		return ""
	}
	return stderr[i:]
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
