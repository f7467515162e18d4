package deploy

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/moongate-edge/moongate/gateway/config"
	"go.yaml.in/yaml/v3"
)

// TestPackagedConfig: the installed /etc/moongate/config.yaml is
// config.example.yaml (itself checked against the defaults) with data_dir
// and functions_dir pointing at the installed paths, and nothing else.
func TestPackagedConfig(t *testing.T) {
	root := repoRoot(t)
	example, err := os.ReadFile(filepath.Join(root, "deploy", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	packaged := packagedConfig(t)
	want, err := config.Parse("config.example.yaml", example)
	if err != nil {
		t.Fatal(err)
	}
	got, err := config.Parse("config.yaml", packaged)
	if err != nil {
		t.Fatalf("packaged config does not load: %v", err)
	}
	if got.DataDir != "/var/lib/moongate" || got.FunctionsDir != "/etc/moongate/functions" {
		t.Fatalf("packaged data_dir %q, functions_dir %q", got.DataDir, got.FunctionsDir)
	}
	got.DataDir, got.FunctionsDir = want.DataDir, want.FunctionsDir
	gy, _ := yaml.Marshal(got)
	wy, _ := yaml.Marshal(want)
	if !bytes.Equal(gy, wy) {
		t.Fatalf("packaged config differs from the example beyond the paths:\n%s\nwant\n%s", gy, wy)
	}
	// Line by line: only the two values and the two lines of the header
	// note change.
	el, pl := strings.Split(string(example), "\n"), strings.Split(string(packaged), "\n")
	if len(el) != len(pl) {
		t.Fatalf("packaged config has %d lines, example %d", len(pl), len(el))
	}
	var changed []string
	for i := range el {
		if el[i] != pl[i] {
			changed = append(changed, pl[i])
		}
	}
	if len(changed) != 4 {
		t.Fatalf("%d lines differ from the example, want 4: %q", len(changed), changed)
	}
	// config.sh refuses an example it does not recognise.
	odd := filepath.Join(t.TempDir(), "odd.yaml")
	if err := os.WriteFile(odd, bytes.Replace(example, []byte("data_dir: ./moongate-data"), []byte("data_dir: ./elsewhere"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(root, nil, "sh", "deploy/config.sh", odd); err == nil || !strings.Contains(out, "data_dir: ./moongate-data") {
		t.Fatalf("config.sh accepted a changed example: %v\n%s", err, out)
	}
}

// TestSystemdVerify runs systemd-analyze verify on the unit, with
// ExecStart pointing at a real binary (verify checks that it exists).
// Any message counts as a failure, warnings included.
func TestSystemdVerify(t *testing.T) {
	analyze := needTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "moongate.service"))
	if err != nil {
		t.Fatal(err)
	}
	// ReadOnlyPaths: ConfigurationDirectory= alone is mounted read-write
	// even under ProtectSystem=strict (seen under a live systemd,
	// deploy/test-systemd.sh).
	for _, key := range []string{"User=moongate", "StateDirectory=moongate", "ConfigurationDirectory=moongate",
		"ReadOnlyPaths=/etc/moongate",
		"ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure", "MemoryMax=", "StandardError=journal"} {
		if !bytes.Contains(unit, []byte("\n"+key)) {
			t.Errorf("unit lacks %s", key)
		}
	}
	// The soft memory limit comes from memory_limit in config.yaml; a
	// GOMEMLIMIT in the unit would silently override it.
	if bytes.Contains(unit, []byte("\nEnvironment=GOMEMLIMIT")) {
		t.Error("unit sets GOMEMLIMIT: it would override memory_limit of the configuration")
	}
	dir := t.TempDir()
	bin := nativeBinary(t)
	p := filepath.Join(dir, "moongate.service")
	if err := os.WriteFile(p, bytes.ReplaceAll(unit, []byte("/usr/bin/moongate"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runErr(dir, []string{"SYSTEMD_LOG_LEVEL=notice"}, analyze, "verify", p)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: a misspelt key is reported.
	bad := filepath.Join(dir, "bad.service")
	if err := os.WriteFile(bad, bytes.Replace(unit, []byte("NoNewPrivileges=yes"), []byte("NoNewPrivilege=yes"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _ := runErr(dir, nil, analyze, "verify", bad); !strings.Contains(out, "NoNewPrivilege") {
		t.Fatalf("systemd-analyze verify did not report a bad key:\n%s", out)
	}
}

// scratchRoot makes a directory with the account files useradd --prefix
// needs.
func scratchRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"passwd":  "root:x:0:0:root:/root:/bin/sh\n",
		"group":   "root:x:0:\n",
		"shadow":  "root:*:19000:0:99999:7:::\n",
		"gshadow": "root:*::\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// account finds NAME in a passwd or group file of the scratch root and
// returns its id.
func account(t *testing.T, file, name string) (int, bool) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) > 3 && fs[0] == name {
			id, err := strconv.Atoi(fs[2])
			if err != nil {
				t.Fatal(err)
			}
			return id, true
		}
	}
	return 0, false
}

func owner(t *testing.T, path string) (mode os.FileMode, uid, gid int) {
	t.Helper()
	fi := mustExist(t, path)
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), int(st.Uid), int(st.Gid)
}

// TestInstallScript runs install.sh into a scratch root (--root), twice
// (idempotent, keeping a changed configuration), then --uninstall and
// --uninstall --purge, and inspects the tree after each step.
func TestInstallScript(t *testing.T) {
	needRoot(t)
	needTool(t, "useradd", "passwd")
	repo := repoRoot(t)
	bin := nativeBinary(t)
	root := scratchRoot(t)
	install := filepath.Join(repo, "deploy", "install.sh")
	// The README runs it as `sudo deploy/install.sh`: it must be executable.
	for _, script := range []string{install, filepath.Join(repo, "deploy", "test-systemd.sh")} {
		if fi, err := os.Stat(script); err != nil {
			t.Fatal(err)
		} else if fi.Mode()&0o111 != 0o111 {
			t.Errorf("%s has mode %v: not executable", script, fi.Mode())
		}
	}

	out := run(t, repo, nil, "sh", install, "--root", root, "--binary", bin)
	if !strings.Contains(out, "created system user moongate") {
		t.Errorf("install output lacks the user creation:\n%s", out)
	}
	check := func() (uid, gid int) {
		t.Helper()
		uid, ok := account(t, filepath.Join(root, "etc", "passwd"), "moongate")
		if !ok {
			t.Fatal("no moongate user in the scratch /etc/passwd")
		}
		gid, ok = account(t, filepath.Join(root, "etc", "group"), "moongate")
		if !ok {
			t.Fatal("no moongate group in the scratch /etc/group")
		}
		if uid >= 1000 || uid == 0 {
			t.Errorf("moongate uid %d is not a system uid", uid)
		}
		passwd, _ := os.ReadFile(filepath.Join(root, "etc", "passwd"))
		if !strings.Contains(string(passwd), ":/var/lib/moongate:/usr/sbin/nologin") {
			t.Errorf("moongate account: %s", passwd)
		}
		binPath := filepath.Join(root, "usr", "local", "bin", "moongate")
		if m, u, _ := owner(t, binPath); m.Perm() != 0o755 || u != 0 {
			t.Errorf("binary mode %v uid %d", m, u)
		}
		if v := run(t, root, nil, binPath, "version"); !strings.Contains(v, "moongate "+testVersion+" (commit "+testCommit) {
			t.Errorf("installed binary: %q", v)
		}
		unit, err := os.ReadFile(filepath.Join(root, "etc", "systemd", "system", "moongate.service"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(unit), "\nExecStart=/usr/local/bin/moongate serve --config /etc/moongate/config.yaml\n") ||
			strings.Contains(string(unit), "/usr/bin/moongate") {
			t.Errorf("unit ExecStart not rewritten for /usr/local/bin:\n%s", unit)
		}
		link, err := os.Readlink(filepath.Join(root, "etc", "systemd", "system", "multi-user.target.wants", "moongate.service"))
		if err != nil || link != "/etc/systemd/system/moongate.service" {
			t.Errorf("enable symlink: %q, %v", link, err)
		}
		if m, u, g := owner(t, filepath.Join(root, "etc", "moongate", "config.yaml")); m.Perm() != 0o640 || u != 0 || g != gid {
			t.Errorf("config.yaml mode %v owner %d:%d, want 0640 0:%d", m, u, g, gid)
		}
		if m, u, g := owner(t, filepath.Join(root, "var", "lib", "moongate")); !m.IsDir() || m.Perm() != 0o750 || u != uid || g != gid {
			t.Errorf("data dir mode %v owner %d:%d, want 0750 %d:%d", m, u, g, uid, gid)
		}
		if fi := mustExist(t, filepath.Join(root, "etc", "moongate", "functions")); !fi.IsDir() {
			t.Error("functions is not a directory")
		}
		return uid, gid
	}
	uid, _ := check()
	cfgPath := filepath.Join(root, "etc", "moongate", "config.yaml")
	if got, _ := os.ReadFile(cfgPath); !bytes.Equal(got, packagedConfig(t)) {
		t.Fatal("installed config.yaml is not the output of deploy/config.sh")
	}

	// Idempotent: a second run changes nothing and keeps an edited config.
	edited := append(packagedConfig(t), []byte("# edited by the administrator\n")...)
	if err := os.WriteFile(cfgPath, edited, 0o640); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(root, "var", "lib", "moongate", "keep.me")
	if err := os.WriteFile(data, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = run(t, repo, nil, "sh", install, "--root", root, "--binary", bin)
	if strings.Contains(out, "created system user") || !strings.Contains(out, "keeping") {
		t.Errorf("second run output:\n%s", out)
	}
	if uid2, _ := check(); uid2 != uid {
		t.Errorf("uid changed from %d to %d", uid, uid2)
	}
	if got, _ := os.ReadFile(cfgPath); !bytes.Equal(got, edited) {
		t.Error("second run overwrote the edited config.yaml")
	}
	if got, _ := os.ReadFile(cfgPath + ".dist"); !bytes.Equal(got, packagedConfig(t)) {
		t.Error("second run did not leave the shipped configuration as config.yaml.dist")
	}
	if n := strings.Count("\n"+mustRead(t, filepath.Join(root, "etc", "passwd")), "\nmoongate:"); n != 1 {
		t.Errorf("%d moongate users after two runs", n)
	}

	// Uninstall keeps configuration and data.
	run(t, repo, nil, "sh", install, "--root", root, "--uninstall")
	mustNotExist(t, filepath.Join(root, "usr", "local", "bin", "moongate"))
	mustNotExist(t, filepath.Join(root, "etc", "systemd", "system", "moongate.service"))
	mustNotExist(t, filepath.Join(root, "etc", "systemd", "system", "multi-user.target.wants", "moongate.service"))
	mustExist(t, cfgPath)
	mustExist(t, data)
	if _, ok := account(t, filepath.Join(root, "etc", "passwd"), "moongate"); !ok {
		t.Error("uninstall without --purge removed the user")
	}
	// Purge removes the rest.
	run(t, repo, nil, "sh", install, "--root", root, "--uninstall", "--purge")
	mustNotExist(t, filepath.Join(root, "etc", "moongate"))
	mustNotExist(t, filepath.Join(root, "var", "lib", "moongate"))
	if _, ok := account(t, filepath.Join(root, "etc", "passwd"), "moongate"); ok {
		t.Error("--purge kept the user")
	}
	// Bad usage is refused.
	if out, err := runErr(repo, nil, "sh", install, "--root", root, "--purge"); err == nil || !strings.Contains(out, "--purge goes with --uninstall") {
		t.Errorf("--purge without --uninstall: %v %s", err, out)
	}
	if out, err := runErr(repo, nil, "sh", install, "--root", root, "--binary", filepath.Join(root, "nope")); err == nil || !strings.Contains(out, "no such file") {
		t.Errorf("missing binary: %v %s", err, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInstallScriptArch: the architecture detection picks the binary of
// this machine from dist/.
func TestInstallScriptArch(t *testing.T) {
	needRoot(t)
	repo := repoRoot(t)
	root := scratchRoot(t)
	// A copy of deploy/ next to a fake dist/ holding only this machine's binary.
	tree := t.TempDir()
	run(t, repo, nil, "cp", "-r", filepath.Join(repo, "deploy"), filepath.Join(tree, "deploy"))
	if err := os.Mkdir(filepath.Join(tree, "dist"), 0o755); err != nil {
		t.Fatal(err)
	}
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64", "arm": "armv7"}[runtime.GOARCH]
	if arch == "" {
		t.Skipf("no moongate build for %s", runtime.GOARCH)
	}
	run(t, repo, nil, "cp", nativeBinary(t), filepath.Join(tree, "dist", "moongate-linux-"+arch))
	out := run(t, tree, nil, "sh", filepath.Join(tree, "deploy", "install.sh"), "--root", root)
	if !strings.Contains(out, "installed moongate "+testVersion) {
		t.Fatalf("install without --binary:\n%s", out)
	}
	// An unknown arch is refused with the fix to apply.
	if out, err := runErr(tree, nil, "sh", filepath.Join(tree, "deploy", "install.sh"), "--root", root, "--arch", "armv6"); err == nil ||
		!strings.Contains(out, "no moongate binary for armv6") {
		t.Fatalf("missing armv6 binary: %v\n%s", err, out)
	}
}

// dpkgStatus is the status of the moongate package ("" when unknown).
func dpkgStatus() string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "moongate").Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// TestDebianPackage builds the amd64 package with nfpm, checks it with
// lintian (no errors), installs it with dpkg -i, runs the installed
// binary, upgrades it unattended to a version shipping another
// configuration (the edited one kept, no question asked), removes it (dpkg
// -r: config and data kept) and purges it (everything gone).
func TestDebianPackage(t *testing.T) {
	needRoot(t)
	needTool(t, "dpkg", "dpkg")
	lintian := needTool(t, "lintian", "lintian")
	if runtime.GOARCH != "amd64" {
		t.Skip("the package test installs the amd64 package")
	}
	if s := dpkgStatus(); s != "" && s != "not-installed" && s != "config-files" {
		t.Skipf("a moongate package is already installed here (%s): not touching it", s)
	}
	repo := repoRoot(t)
	bin := nativeBinary(t)
	out := t.TempDir()
	deb := strings.TrimSpace(lastLine(run(t, repo, goEnv(), "sh", "deploy/package.sh", "amd64", bin, "0.0.1", out)))
	// The next version ships a changed configuration (as most releases
	// do: a new key, a comment).
	changed := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(changed, append(packagedConfig(t), "# a new comment\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	// Built from another directory with paths relative to it (they were
	// taken relative to the repository after package.sh's cd).
	work := t.TempDir()
	if err := os.Symlink(bin, filepath.Join(work, "mg.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(changed, filepath.Join(work, "changed.yaml")); err != nil {
		t.Fatal(err)
	}
	deb2 := strings.TrimSpace(lastLine(run(t, work, append(goEnv(), "MOONGATE_CONFIG_FILE=changed.yaml"), "sh", filepath.Join(repo, "deploy", "package.sh"), "amd64", "mg.bin", "0.0.2", "out")))
	if want := filepath.Join(work, "out", "moongate_0.0.2-1_amd64.deb"); deb2 != want {
		t.Fatalf("package.sh from %s printed %q, want %q", work, deb2, want)
	}
	if _, err := os.Stat(filepath.Join(repo, "out")); err == nil {
		t.Fatal("package.sh made out/ in the repository")
	}

	info := run(t, repo, nil, "dpkg-deb", "--info", deb)
	for _, s := range []string{"Package: moongate", "Version: 0.0.1-1", "Architecture: amd64", "Depends: adduser", "preinst", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, s) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", s, info)
		}
	}
	lint, _ := runErr(repo, nil, lintian, "--tag-display-limit", "0", deb)
	for _, line := range strings.Split(lint, "\n") {
		if strings.HasPrefix(line, "E: ") {
			t.Errorf("lintian error: %s", line)
		}
	}
	t.Logf("lintian:\n%s", lint)

	t.Cleanup(func() { _, _ = runErr("/", nil, "dpkg", "--purge", "moongate") })
	// preinst refuses to install over what install.sh installed (its unit
	// in /etc/systemd/system would override the package's).
	const installShUnit = "/etc/systemd/system/moongate.service"
	if _, err := os.Lstat(installShUnit); os.IsNotExist(err) {
		if err := os.WriteFile(installShUnit, []byte("# Installed by deploy/install.sh: remove with install.sh --uninstall.\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runErr("/", nil, "dpkg", "-i", deb)
		_ = os.Remove(installShUnit)
		if err == nil || !strings.Contains(out, "install.sh --uninstall") {
			t.Errorf("dpkg -i over an install.sh install: %v\n%s", err, out)
		}
		if s := dpkgStatus(); s == "installed" {
			t.Fatalf("status after the refused dpkg -i: %q", s)
		}
	}
	run(t, "/", nil, "dpkg", "-i", deb)
	if s := dpkgStatus(); s != "installed" {
		t.Fatalf("status after dpkg -i: %q", s)
	}
	if v := run(t, "/", nil, "/usr/bin/moongate", "version"); !strings.Contains(v, "moongate "+testVersion) {
		t.Fatalf("installed moongate version: %q", v)
	}
	run(t, "/", nil, "/usr/bin/moongate", "check-config", "/etc/moongate/config.yaml")
	if got := mustRead(t, "/etc/moongate/config.yaml"); got != string(packagedConfig(t)) {
		t.Error("/etc/moongate/config.yaml is not the output of deploy/config.sh")
	}
	if c := run(t, "/", nil, "dpkg-query", "-W", "-f", "${Conffiles}", "moongate"); strings.Contains(c, "/etc/moongate/config.yaml") {
		t.Errorf("config.yaml is a conffile (an unattended upgrade would stop at dpkg's question): %q", c)
	}
	uid, gid := lookupIDs(t)
	if m, u, g := owner(t, "/etc/moongate/config.yaml"); m.Perm() != 0o640 || u != 0 || g != gid {
		t.Errorf("config.yaml mode %v owner %d:%d", m, u, g)
	}
	if m, u, g := owner(t, "/var/lib/moongate"); m.Perm() != 0o750 || u != uid || g != gid {
		t.Errorf("/var/lib/moongate mode %v owner %d:%d", m, u, g)
	}
	if link, err := os.Readlink("/etc/systemd/system/multi-user.target.wants/moongate.service"); err != nil || link != "/lib/systemd/system/moongate.service" {
		t.Errorf("service not enabled: %q %v", link, err)
	}
	if out, err := runErr("/", []string{"SYSTEMD_LOG_LEVEL=notice"}, "systemd-analyze", "verify", "/lib/systemd/system/moongate.service"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
	}

	// Upgrade: the administrator's configuration stays.
	edited := mustRead(t, "/etc/moongate/config.yaml") + "# edited\n"
	if err := os.WriteFile("/etc/moongate/config.yaml", []byte(edited), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/var/lib/moongate/keep.me", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Unattended: no terminal, no --force-confold.
	if out, err := runErr("/", []string{"DEBIAN_FRONTEND=noninteractive"}, "dpkg", "-i", deb2); err != nil {
		t.Fatalf("unattended upgrade: %v\n%s", err, out)
	}
	if v := run(t, "/", nil, "dpkg-query", "-W", "-f", "${Version}", "moongate"); v != "0.0.2-1" {
		t.Errorf("version after upgrade: %q", v)
	}
	if got := mustRead(t, "/etc/moongate/config.yaml"); got != edited {
		t.Error("upgrade replaced the edited configuration")
	}
	if m, _, g := owner(t, "/etc/moongate/config.yaml"); m.Perm() != 0o640 || g != gid {
		t.Errorf("config.yaml after upgrade: mode %v gid %d", m, g)
	}

	// Remove: files go, configuration and data stay.
	run(t, "/", nil, "dpkg", "-r", "moongate")
	if s := dpkgStatus(); s != "config-files" {
		t.Errorf("status after dpkg -r: %q", s)
	}
	mustNotExist(t, "/usr/bin/moongate")
	mustNotExist(t, "/lib/systemd/system/moongate.service")
	mustExist(t, "/etc/moongate/config.yaml")
	mustExist(t, "/var/lib/moongate/keep.me")

	// Purge: nothing of moongate is left but its system user.
	run(t, "/", nil, "dpkg", "--purge", "moongate")
	if s := dpkgStatus(); s != "" && s != "not-installed" {
		t.Errorf("status after purge: %q", s)
	}
	for _, p := range []string{"/etc/moongate", "/var/lib/moongate", "/etc/systemd/system/moongate.service",
		"/etc/systemd/system/multi-user.target.wants/moongate.service"} {
		mustNotExist(t, p)
	}
	if so, _ := runErr("/", nil, "dpkg-statoverride", "--list", "/etc/moongate/config.yaml"); strings.TrimSpace(so) != "" {
		t.Errorf("stat override left after purge: %s", so)
	}
}

// lookupIDs returns the uid and gid of the moongate user on this machine.
func lookupIDs(t *testing.T) (int, int) {
	t.Helper()
	uid, ok := account(t, "/etc/passwd", "moongate")
	if !ok {
		t.Fatal("no moongate user after dpkg -i")
	}
	gid, ok := account(t, "/etc/group", "moongate")
	if !ok {
		t.Fatal("no moongate group after dpkg -i")
	}
	return uid, gid
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// TestDebianPackageArm64: the arm64 package carries the arm64 binary,
// declares its architecture and passes lintian without errors (the armhf
// one is built the same way by make deb, from the armv6 binary).
func TestDebianPackageArm64(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds the arm64 binary")
	}
	needTool(t, "dpkg-deb", "dpkg")
	lintian := needTool(t, "lintian", "lintian")
	repo := repoRoot(t)
	bin := moongateBinary(t, "arm64", "")
	out := t.TempDir()
	deb := strings.TrimSpace(lastLine(run(t, repo, goEnv(), "sh", "deploy/package.sh", "arm64", bin, "0.0.1", out)))
	if info := run(t, repo, nil, "dpkg-deb", "--field", deb, "Architecture"); strings.TrimSpace(info) != "arm64" {
		t.Fatalf("Architecture: %q", info)
	}
	x := filepath.Join(out, "x")
	run(t, repo, nil, "dpkg-deb", "-x", deb, x)
	f, err := elf.Open(filepath.Join(x, "usr", "bin", "moongate"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 || f.Class != elf.ELFCLASS64 {
		t.Fatalf("packaged binary is %v %v", f.Machine, f.Class)
	}
	lint, _ := runErr(repo, nil, lintian, "--tag-display-limit", "0", deb)
	for _, line := range strings.Split(lint, "\n") {
		if strings.HasPrefix(line, "E: ") {
			t.Errorf("lintian error: %s", line)
		}
	}
}
