package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDpkgQuery puts a dpkg-query on PATH that reports the moongate
// package as installed, and returns the environment to run with.
func fakeDpkgQuery(t *testing.T) []string { return fakeDpkgStatus(t, "installed") }

// fakeDpkgStatus is fakeDpkgQuery reporting status.
func fakeDpkgStatus(t *testing.T, status string) []string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\nprintf " + status + "\n"
	if err := os.WriteFile(filepath.Join(dir, "dpkg-query"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"PATH=" + dir + ":" + os.Getenv("PATH")}
}

// TestInstallScriptRefusesPackage: with the Debian package installed,
// install.sh --uninstall [--purge] refuses and touches nothing (removing
// the package's configuration and user would break dpkg's stat override).
func TestInstallScriptRefusesPackage(t *testing.T) {
	repo := repoRoot(t)
	root := t.TempDir()
	files := []string{
		"usr/bin/moongate",
		"lib/systemd/system/moongate.service",
		"etc/moongate/config.yaml",
		"var/lib/moongate/keep.me",
	}
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := fakeDpkgQuery(t)
	install := filepath.Join(repo, "deploy", "install.sh")
	for _, args := range [][]string{{"--uninstall"}, {"--uninstall", "--purge"}} {
		out, err := runErr(repo, env, "sh", append([]string{install, "--root", root}, args...)...)
		if err == nil || !strings.Contains(out, "installed by the Debian package: use dpkg -r") ||
			!strings.Contains(out, "dpkg -P") {
			t.Errorf("install.sh %v with the package installed: %v\n%s", args, err, out)
		}
		for _, f := range files {
			mustExist(t, filepath.Join(root, f))
		}
	}
	if out, err := runErr(repo, env, "sh", install, "--root", root, "--binary", install); err == nil ||
		!strings.Contains(out, "Debian package is installed") {
		t.Errorf("install.sh over the package: %v\n%s", err, out)
	}
}

// TestInstallScriptRefusesRemovedPackage: after dpkg -r the package is in
// dpkg's config-files state; install.sh refuses to install over it (a
// later dpkg -P would delete the configuration and the data it uses) and
// says how to switch safely, touching nothing.
func TestInstallScriptRefusesRemovedPackage(t *testing.T) {
	repo := repoRoot(t)
	root := t.TempDir()
	data := filepath.Join(root, "var/lib/moongate/keep.me")
	if err := os.MkdirAll(filepath.Dir(data), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(data, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	install := filepath.Join(repo, "deploy", "install.sh")
	out, err := runErr(repo, fakeDpkgStatus(t, "config-files"), "sh", install, "--root", root, "--binary", install)
	if err == nil || !strings.Contains(out, "removed but not purged") || !strings.Contains(out, "dpkg -P moongate") {
		t.Fatalf("install.sh over a removed package: %v\n%s", err, out)
	}
	mustExist(t, data)
	if _, err := os.Stat(filepath.Join(root, "usr/local/bin/moongate")); err == nil {
		t.Error("install.sh installed the binary before refusing")
	}
}

// TestPreinstRefusesInstallScript: the package's preinst fails when
// install.sh installed moongate (its unit in /etc/systemd/system would
// override the package's), and passes after install.sh --uninstall.
func TestPreinstRefusesInstallScript(t *testing.T) {
	repo := repoRoot(t)
	root := t.TempDir() // no etc/passwd: install.sh creates no user
	preinst := filepath.Join(repo, "deploy", "debian", "preinst")
	env := []string{"DPKG_ROOT=" + root}
	if out, err := runErr(repo, env, "sh", preinst, "install"); err != nil {
		t.Fatalf("preinst on a clean root: %v\n%s", err, out)
	}
	// A stand-in binary: the test is about the files install.sh leaves.
	bin := filepath.Join(t.TempDir(), "moongate")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho moongate test\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	install := filepath.Join(repo, "deploy", "install.sh")
	run(t, repo, nil, "sh", install, "--root", root, "--binary", bin)
	unit := mustRead(t, filepath.Join(root, "etc", "systemd", "system", "moongate.service"))
	if !strings.HasPrefix(unit, "# Installed by deploy/install.sh") {
		t.Errorf("install.sh's unit lacks the marker line:\n%.200s", unit)
	}
	for _, arg := range []string{"install", "upgrade"} {
		out, err := runErr(repo, env, "sh", preinst, arg)
		if err == nil || !strings.Contains(out, "install.sh --uninstall") ||
			!strings.Contains(out, "/etc/systemd/system/moongate.service") {
			t.Errorf("preinst %s over an install.sh install: %v\n%s", arg, err, out)
		}
	}
	// Only the unit (binary removed by hand): still refused.
	if err := os.Remove(filepath.Join(root, "usr", "local", "bin", "moongate")); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(repo, env, "sh", preinst, "install"); err == nil || !strings.Contains(out, "moongate.service") {
		t.Errorf("preinst with install.sh's unit only: %v\n%s", err, out)
	}
	run(t, repo, nil, "sh", install, "--root", root, "--uninstall")
	if out, err := runErr(repo, env, "sh", preinst, "install"); err != nil {
		t.Errorf("preinst after install.sh --uninstall: %v\n%s", err, out)
	}
	// A bare binary in /usr/local/bin (no install.sh unit): a warning only.
	if err := os.MkdirAll(filepath.Join(root, "usr", "local", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr", "local", "bin", "moongate"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(repo, env, "sh", preinst, "install"); err != nil || !strings.Contains(out, "warning") {
		t.Errorf("preinst with a bare /usr/local/bin/moongate: %v\n%s", err, out)
	}
	mustExist(t, filepath.Join(root, "etc", "moongate", "config.yaml"))
}

// TestDocsHardening: where data_dir is configured, the configuration
// example and the unit say how to make another directory writable under
// ProtectSystem=strict, and no example puts a password on a command line.
func TestDocsHardening(t *testing.T) {
	repo := repoRoot(t)
	example := mustRead(t, filepath.Join(repo, "deploy", "config.example.yaml"))
	i := strings.Index(example, "\ndata_dir:")
	if i < 0 || !strings.Contains(example[max(0, i-600):i], "ReadWritePaths=") ||
		!strings.Contains(example[max(0, i-600):i], "systemctl edit moongate") {
		t.Error("config.example.yaml: no systemctl edit / ReadWritePaths= note above data_dir")
	}
	if strings.Contains(example, "htpasswd -nb") || !strings.Contains(example, "htpasswd -nBC 10 USER`") {
		t.Error("config.example.yaml: htpasswd example must not take the password as an argument")
	}
	unit := mustRead(t, filepath.Join(repo, "deploy", "moongate.service"))
	if !strings.Contains(unit, "#   ReadWritePaths=") {
		t.Error("moongate.service: no ReadWritePaths= note for a moved data_dir")
	}
	if d := mustRead(t, filepath.Join(repo, "docs", "deploy.md")); !strings.Contains(d, "ReadWritePaths=") {
		t.Error("docs/deploy.md: no ReadWritePaths= note")
	}
}
