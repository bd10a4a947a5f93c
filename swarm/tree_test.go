package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swap"
)

// A host with TreeDir set fetches a build's files straight into the tree
// that becomes the release, and seeds from that release once installed:
// n1 fetches from the origin and installs; the origin then stops sharing
// the build, and n2 gets every byte from n1's installed release.
func TestFetchIntoTree(t *testing.T) {
	ctx := context.Background()
	stores := make([]*swap.Store, 3)
	nodes := startSwarms(t, 3, 45, zerolog.Nop(), nil)
	for i, s := range nodes {
		st, err := swap.Open(filepath.Join(s.cfg.DataDir, "svc"), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = st
		if i > 0 {
			s.cfg.TreeDir = func(_, build string) (string, bool) { return st.FetchDir(build), st.Has(build) }
		}
	}
	src := t.TempDir()
	big := make([]byte, 700<<10+123)
	_, _ = rand.Read(big)
	for name, data := range map[string][]byte{"bin/app": big, "etc/conf": []byte("x=1\n"), "empty": nil, "dir/sub/ünï.txt": []byte("ü")} {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// More files than a build keeps open (maxOpenFiles): the storage
	// closes and reopens them as pieces span them.
	for i := range 3 * maxOpenFiles {
		p := filepath.Join(src, "many", fmt.Sprintf("f%03d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, bytes.Repeat([]byte{byte(i)}, 5000+i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "bin/app"), 0o751); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("bin/app", filepath.Join(src, "run")); err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if _, err := swap.Pack(src, &archive); err != nil {
		t.Fatal(err)
	}
	origin := nodes[0]
	m := &core.Manifest{Service: "web", Build: "v1", Origin: origin.cfg.Node}
	if err := os.WriteFile(origin.ArchivePath("web", "v1"), archive.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := origin.Describe(m); err != nil {
		t.Fatal(err)
	}
	mi, _ := metainfo.Load(bytes.NewReader(m.MetaInfo))
	if info, _ := mi.UnmarshalInfo(); !IsLayout(&info) || info.TotalLength() != int64(archive.Len()) {
		t.Fatalf("Describe of a tar archive: layout %v, length %d of %d", IsLayout(&info), info.TotalLength(), archive.Len())
	}

	fetch := func(i int) *Transfer {
		t.Helper()
		x, err := nodes[i].Add(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := x.Wait(wctx); err != nil {
			t.Fatalf("n%d: %v (progress %+v)", i, err, x.Progress())
		}
		if x.Tree() != stores[i].FetchDir("v1") {
			t.Fatalf("n%d fetched into %q, want the store's fetch dir", i, x.Tree())
		}
		if _, err := os.Stat(nodes[i].ArchivePath("web", "v1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("n%d wrote an archive (%v): each byte should be written once, into the tree", i, err)
		}
		if got, err := io.ReadAll(x.Archive()); err != nil || !bytes.Equal(got, archive.Bytes()) {
			t.Fatalf("n%d: archive bytes read back through the placement differ (%v)", i, err)
		}
		if !x.Checked() {
			t.Errorf("n%d: every piece arrived, but not every one passed its SHA-256 check: the install would hash the build again", i)
		}
		return x
	}
	install := func(i int, x *Transfer) {
		t.Helper()
		if _, err := stores[i].InstallTree(ctx, "v1", x.Tree(), x.Archive(), x.Layout(), m.SHA256, x.Checked(), swap.NoLimits); err != nil {
			t.Fatalf("n%d: install: %v", i, err)
		}
		x.Installed(stores[i].ReleaseDir("v1"))
		if seeds := nodes[i].Seeds(); len(seeds) != 1 || seeds[0].Path != stores[i].ReleaseDir("v1") || !seeds[0].InRelease {
			t.Errorf("n%d: status says the build is at %+v, want its release", i, seeds)
		}
		rel := stores[i].ReleaseDir("v1")
		if got, _ := os.ReadFile(filepath.Join(rel, "bin/app")); !bytes.Equal(got, big) {
			t.Errorf("n%d: bin/app differs", i)
		}
		if fi, err := os.Stat(filepath.Join(rel, "bin/app")); err != nil || fi.Mode().Perm() != 0o751 {
			t.Errorf("n%d: bin/app mode %v (%v), want 0751", i, fi.Mode(), err)
		}
		if l, err := os.Readlink(filepath.Join(rel, "run")); err != nil || l != "bin/app" {
			t.Errorf("n%d: run -> %q (%v)", i, l, err)
		}
		if fi, err := os.Stat(filepath.Join(rel, "empty")); err != nil || fi.Size() != 0 {
			t.Errorf("n%d: empty file: %v", i, err)
		}
		for j := range 3 * maxOpenFiles {
			if got, err := os.ReadFile(filepath.Join(rel, "many", fmt.Sprintf("f%03d", j))); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{byte(j)}, 5000+j)) {
				t.Fatalf("n%d: many/f%03d differs (%v)", i, j, err)
			}
		}
		if err := stores[i].Intact("v1"); err != nil {
			t.Errorf("n%d: installed release not intact: %v", i, err)
		}
		if _, err := os.Stat(x.Tree()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("n%d: the fetch dir is still there after install (%v)", i, err)
		}
	}
	if _, err := origin.Add(ctx, m); err != nil {
		t.Fatal(err)
	}
	x1 := fetch(1)
	install(1, x1)
	if _, err := x1.pl.open.Load().rw([]byte{0}, 0, true); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write into an installed release: %v, want ErrReadOnly", err)
	}
	if err := origin.Drop(m); err != nil {
		t.Fatal(err)
	}
	x2 := fetch(2) // from n1's installed release only
	if p := x2.Progress(); p.FromOrigin != 0 {
		t.Errorf("n2 got %d bytes from the origin after it dropped the build", p.FromOrigin)
	}
	install(2, x2)
}

// A layout metainfo that names a file outside the tree, or one file twice,
// never gets storage: nothing is written.
func TestTreeLayoutRefusesHostileNames(t *testing.T) {
	for _, bad := range [][]string{{"..", "etc", "passwd"}, {"/etc"}, {"a", "..", "..", "b"}, {"a"}} {
		info := metainfo.Info{Name: "web@v1.tar", PieceLength: 16 << 10, Files: []metainfo.FileInfo{
			{Length: 512, Path: []string{framingDir, "0"}}, {Length: 10, Path: []string{"a"}},
			{Length: 512, Path: []string{framingDir, "2"}}, {Length: 10, Path: bad},
			{Length: 1024, Path: []string{framingDir, "4"}},
		}}
		info.Pieces = make([]byte, 20)
		if _, err := bencode.Marshal(info); err != nil {
			t.Fatal(err)
		}
		tree := t.TempDir()
		ps := &placeStorage{dir: t.TempDir(), at: map[metainfo.Hash]*placement{}}
		ih := metainfo.HashBytes([]byte(bad[0]))
		ps.place(ih, &placement{archive: filepath.Join(ps.dir, "web@v1.tar.framing"), tree: tree})
		if _, err := ps.OpenTorrent(context.Background(), &info, ih); !errors.Is(err, ErrBadMetaInfo) {
			t.Errorf("layout with %q: %v, want ErrBadMetaInfo", bad, err)
		}
	}
}

// A build with more files than a manifest's layout list can hold gets a
// plain metainfo, and a host set to fetch into trees fetches it as an
// archive.
func TestManyFilesFallBackToArchive(t *testing.T) {
	ctx := context.Background()
	nodes := startSwarms(t, 2, 45, zerolog.Nop(), nil)
	tree := filepath.Join(t.TempDir(), "fetching", "v2")
	nodes[1].cfg.TreeDir = func(_, _ string) (string, bool) { return tree, false }
	src := t.TempDir()
	for i := range 3000 {
		name := filepath.Join(src, fmt.Sprintf("some/rather/long/directory/name/file-%05d.txt", i))
		if i == 0 {
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(name, []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var archive bytes.Buffer
	if _, err := swap.Pack(src, &archive); err != nil {
		t.Fatal(err)
	}
	m := &core.Manifest{Service: "web", Build: "v2", Origin: nodes[0].cfg.Node}
	if err := os.WriteFile(nodes[0].ArchivePath("web", "v2"), archive.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := nodes[0].Describe(m); err != nil {
		t.Fatal(err)
	}
	mi, _ := metainfo.Load(bytes.NewReader(m.MetaInfo))
	if info, _ := mi.UnmarshalInfo(); IsLayout(&info) || len(m.MetaInfo) > maxLayoutInfo {
		t.Fatalf("3,000 files: layout %v, metainfo %d bytes", IsLayout(&info), len(m.MetaInfo))
	}
	if _, err := nodes[0].Add(ctx, m); err != nil {
		t.Fatal(err)
	}
	x := fetchAll(t, nodes[1:], m, archive.Bytes())[0]
	if x.Tree() != "" {
		t.Errorf("fetched into %q", x.Tree())
	}
	if got, err := os.ReadFile(nodes[1].ArchivePath("web", "v2")); err != nil || !bytes.Equal(got, archive.Bytes()) {
		t.Errorf("the archive fetched differs (%v)", err)
	}
	if _, err := os.Stat(tree); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a tree was made for a build fetched as an archive (%v)", err)
	}
}
