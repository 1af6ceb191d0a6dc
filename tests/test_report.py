from checks.report import CheckFailed, Report


def make_report():
    report = Report("Lesson X · something")
    report.add("first thing", True, observed="200 in 12 ms")
    report.fail("second thing", observed="404 {}", expected="200", hint="define the route")
    return report


def test_text_lists_passes_briefly_and_failures_in_detail():
    text = make_report().text()
    assert text.splitlines()[0] == "✗ Lesson X · something: 1 of 2 passed"
    assert "  ✓ first thing (200 in 12 ms)" in text
    for line in ("  ✗ second thing", "      observed: 404 {}", "      expected: 200", "      hint: define the route"):
        assert line in text


def test_failures_only_text_leaves_out_passes():
    text = make_report().text(failures_only=True)
    assert "first thing" not in text and "second thing" in text


def test_html_escapes_and_marks_verdict():
    report = Report("<title>")
    report.fail("<b>item</b>", observed="<script>x</script>")
    html = report._repr_html_()
    assert 'data-passed="false"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;title&gt;" in html


def test_empty_report_does_not_pass():
    assert not Report("nothing").passed


def test_check_failed_is_an_assertion_error_whose_traceback_is_the_report():
    error = CheckFailed(make_report())
    assert isinstance(error, AssertionError)
    lines = error._render_traceback_()
    assert lines[0].startswith("CheckFailed: ✗ Lesson X")
    joined = "\n".join(lines)
    assert "second thing" in joined and "first thing" not in joined
    assert "Traceback" not in joined and "def " not in joined


def test_figures_render_as_png_only_in_html():
    from checks.timing import Span, Timeline

    timeline = Timeline(title="t", spans=[Span("a", 0.0, 0.1, "200"), Span("b", 0.1, 0.2, "500")])
    report = Report("with a figure")
    report.add("ok", True)
    report.figure("the timeline", timeline._repr_png_)
    assert "the timeline" not in report.text()
    html = report._repr_html_()
    assert '<img alt="the timeline" src="data:image/png;base64,iVBOR' in html
