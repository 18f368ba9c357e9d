use std::time::Duration;

use gatehouse_testkit::{TempDir, raw_http, wait_for};

use crate::common::{POLICY, builder, repos};

const RECEIVE: &str = "/demo/hello.git/info/refs?service=git-receive-pack";

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn policy_reloads_both_ways_and_a_broken_file_keeps_the_old_policy() {
    let tmp = TempDir::new("reload");
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let bot = format!("Bearer {}", gw.token("ci-bot", &["ci"]));
    let status = || raw_http(gw.port, "GET", RECEIVE, &[("Authorization", &bot)]).0;
    assert_eq!(status(), 403);

    let widened = format!(
        "{POLICY}\n@id(\"ci-push\")\npermit(principal in Gatehouse::Group::\"ci\", action == Gatehouse::Action::\"git:write\", resource in Gatehouse::Owner::\"demo\");\n"
    );
    std::fs::write(gw.policy_path(), &widened).unwrap();
    wait_for("the widened policy", Duration::from_secs(10), || {
        (status() == 200).then_some(())
    });

    // A broken file is refused: the widened policy stays in force and the failure is counted.
    std::fs::write(gw.policy_path(), "permit(principal, action, resource").unwrap();
    wait_for(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || {
            (metric(
                &gw.metrics(),
                "gatehouse_policy_reloads_total{result=\"error\"}",
            ) >= 1.0)
                .then_some(())
        },
    );
    assert_eq!(status(), 200);
    // So is a file that parses but names an action the schema does not have.
    std::fs::write(
        gw.policy_path(),
        "permit(principal, action == Gatehouse::Action::\"git:push\", resource);",
    )
    .unwrap();
    wait_for("the second failed reload", Duration::from_secs(10), || {
        (metric(
            &gw.metrics(),
            "gatehouse_policy_reloads_total{result=\"error\"}",
        ) >= 2.0)
            .then_some(())
    });
    assert_eq!(status(), 200);

    std::fs::write(gw.policy_path(), POLICY).unwrap();
    wait_for("the narrowed policy", Duration::from_secs(10), || {
        (status() == 403).then_some(())
    });
    assert!(
        gw.log()
            .contains("policy reload failed; keeping the previous policy")
    );
    assert!(
        metric(
            &gw.metrics(),
            "gatehouse_policy_reloads_total{result=\"ok\"}"
        ) >= 3.0
    );
}
