"""tinyllm.report: the final losses read from metrics.csv, and the config record."""

from __future__ import annotations

import yaml
from tinyllm.report import final_losses, read_metrics, summary_html, write_config, write_summary

HEADER = "event,iter,tokens,train_loss,val_loss,train_bpb,val_bpb,lr,tokens_per_s,mfu\n"


def test_final_losses_come_from_the_last_evaluation(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        HEADER
        + "eval,0,0,6.2,6.3,2.1,2.2,0,,\n"
        + "train,5,2560,5.0,,,,1e-3,650,0.005\n"
        + "eval,10,5120,4.5,4.6,1.7,1.75,1e-3,,\n"
        + "train,15,7680,4.1,,,,1e-3,650,0.005\n"  # a later step without evaluation
    )
    summary = write_summary(metrics, tmp_path / "summary.html")
    assert summary["iter"] == "10" and summary["evaluated"]
    assert summary["train"] == {"nats_per_token": 4.5, "bits_per_byte": 1.7}
    assert summary["val"] == {"nats_per_token": 4.6, "bits_per_byte": 1.75}
    page = (tmp_path / "summary.html").read_text()
    assert "4.6000" in page and "1.7500" in page and "last evaluation" in page


def test_missing_columns_and_no_evaluation_are_tolerated(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("iter,train_loss,val_loss\n1,5.5,\n2,5.25,\n")
    summary = final_losses(read_metrics(metrics))
    assert not summary["evaluated"] and summary["iter"] == "2"
    assert summary["train"] == {"nats_per_token": 5.25, "bits_per_byte": None}
    assert summary["val"] == {"nats_per_token": None, "bits_per_byte": None}
    assert "n/a" in summary_html(summary) and "no evaluation" in summary_html(summary)


def test_outputs_replace_the_old_file_atomically(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(HEADER + "eval,10,5120,4.5,4.6,1.7,1.75,1e-3,,\n")
    page = tmp_path / "summary.html"
    page.write_text("an older summary")
    write_summary(metrics, page)
    assert "4.6000" in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "summary.html"]  # no temporary file


def test_config_record_round_trips(tmp_path):
    config = {"data": {"url": "x.tar.gz", "shards": 2}, "sample": {"prompts": ["Once", ""], "top_k": None}}
    write_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config
