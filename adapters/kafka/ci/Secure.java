// The users and ACLs of the secured listeners, set through the broker's plaintext listener
// (whose anonymous principal is a super user). Run by adapters/kafka/ci/broker as a Java
// single-file program with the broker's jars on the class path:
//
//   java -cp 'lib/*' Secure.java BOOTSTRAP APP_USER APP_PASSWORD DENIED_USER DENIED_PASSWORD MTLS_USER
//
// Idempotent: a SCRAM credential is upserted and an ACL that exists already is left as it is.
//   APP_USER     SCRAM-SHA-512; every topic and group, except topics starting with "private."
//   DENIED_USER  SCRAM-SHA-512; no ACL at all (allow.everyone.if.no.acl.found=false)
//   MTLS_USER    the principal of the client certificate (mutual TLS); like APP_USER

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Secure {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], app = args[1], appPassword = args[2];
        String denied = args[3], deniedPassword = args[4], mtls = args[5];
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        try (Admin admin = Admin.create(props)) {
            ScramCredentialInfo scram = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192);
            admin.alterUserScramCredentials(List.of(
                    new UserScramCredentialUpsertion(app, scram, appPassword),
                    new UserScramCredentialUpsertion(denied, scram, deniedPassword)))
                .all().get(30, TimeUnit.SECONDS);
            List<AclBinding> acls = new ArrayList<>();
            for (String user : List.of(app, mtls)) {
                String principal = "User:" + user;
                acls.add(allow(ResourceType.TOPIC, "*", PatternType.LITERAL, principal));
                acls.add(allow(ResourceType.GROUP, "*", PatternType.LITERAL, principal));
                acls.add(new AclBinding(
                    new ResourcePattern(ResourceType.TOPIC, "private.", PatternType.PREFIXED),
                    new AccessControlEntry(principal, "*", AclOperation.ALL, AclPermissionType.DENY)));
            }
            admin.createAcls(acls).all().get(30, TimeUnit.SECONDS);
        }
    }

    static AclBinding allow(ResourceType type, String name, PatternType pattern, String principal) {
        return new AclBinding(new ResourcePattern(type, name, pattern),
            new AccessControlEntry(principal, "*", AclOperation.ALL, AclPermissionType.ALLOW));
    }
}
